"""Pre-signed URLs of the signed storage kinds: S3 SigV2, S3 SigV4 and Azure SAS.

Owns: building the query string of a pre-signed URL (the shapes davix and UGR
produce, see ``docs/testfed.md``) and checking one, with a real HMAC over a
test secret. Everything here is a pure function of its arguments; the current
time is passed in, never read. Expiry is decided from the URL itself
(``Expires``, ``X-Amz-Date`` + ``X-Amz-Expires``, ``se``), as a client must.

Paths are canonicalised before signing (decoded, then each segment encoded
with only RFC 3986 unreserved characters left as is), so a client that encodes
a name differently from us still matches, as with real S3.

Must not import: anything of davfed's.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlencode

SignedKind = Literal["s3v2", "s3v4", "azure"]
SIGNED_KINDS: tuple[SignedKind, ...] = ("s3v2", "s3v4", "azure")

AZURE_VERSION = "2016-05-31"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The test secrets a signed endpoint shares with the federation."""

    access_key: str = "TESTFEDACCESSKEY0000"
    secret_key: str = "testfed/secret/key/not/for/production"
    region: str = "us-east-1"
    #: Azure storage account name and its (base64) account key.
    account: str = "testfed"
    account_key: str = base64.b64encode(b"testfed-azure-account-key-32byte").decode()


@dataclass(frozen=True, slots=True)
class SignatureProblem:
    """Why a signed request is refused: HTTP status plus the error code and message."""

    status: int
    code: str
    message: str


def canonical_path(path: str) -> str:
    """``path`` decoded, then every segment encoded as S3 SigV4 wants it."""
    return "/".join(quote(unquote(seg), safe="-_.~") for seg in path.split("/"))


def _amz_date(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _parse_amz_date(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ")))


def _parse_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


# --- S3 SigV2 -------------------------------------------------------------------------------


def _s3v2_signature(method: str, path: str, expires: int, creds: Credentials) -> str:
    string_to_sign = f"{method}\n\n\n{expires}\n{canonical_path(path)}"
    digest = hmac.new(creds.secret_key.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def sign_s3v2(method: str, path: str, now: float, validity: int, creds: Credentials) -> str:
    """Query string ``AWSAccessKeyId=…&Expires=…&Signature=…`` for ``method path``."""
    expires = int(now) + validity
    signature = _s3v2_signature(method, path, expires, creds)
    return urlencode(
        {"AWSAccessKeyId": creds.access_key, "Expires": str(expires), "Signature": signature}
    )


def verify_s3v2(
    method: str, path: str, query: Mapping[str, str], now: float, creds: Credentials
) -> SignatureProblem | None:
    """None if ``query`` is a valid, unexpired SigV2 signature of ``method path``."""
    try:
        key, expires_text, signature = (
            query["AWSAccessKeyId"],
            query["Expires"],
            query["Signature"],
        )
        expires = int(expires_text)
    except (KeyError, ValueError):
        return SignatureProblem(
            403,
            "AccessDenied",
            "Query-string authentication requires the Signature, Expires and "
            "AWSAccessKeyId parameters",
        )
    if key != creds.access_key:
        return SignatureProblem(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    expected = _s3v2_signature(method, path, expires, creds)
    if not hmac.compare_digest(expected, signature):
        return _signature_mismatch()
    if now > expires:
        return SignatureProblem(403, "AccessDenied", "Request has expired")
    return None


# --- S3 SigV4 -------------------------------------------------------------------------------


def _hmac256(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _s3v4_signature(
    method: str, path: str, host: str, params: Mapping[str, str], creds: Credentials
) -> str:
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(params.items())
        if k != "X-Amz-Signature"
    )
    canonical_request = "\n".join(
        [
            method,
            canonical_path(path),
            canonical_query,
            f"host:{host}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    amz_date = params["X-Amz-Date"]
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    date, region, service, terminal = scope.split("/")
    key = _hmac256(("AWS4" + creds.secret_key).encode(), date)
    for part in (region, service, terminal):
        key = _hmac256(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def sign_s3v4(
    method: str, path: str, host: str, now: float, validity: int, creds: Credentials
) -> str:
    """Query string of a SigV4 pre-signed URL (``X-Amz-SignedHeaders=host``)."""
    amz_date = _amz_date(now)
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{creds.access_key}/{amz_date[:8]}/{creds.region}/s3/aws4_request",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(validity),
        "X-Amz-SignedHeaders": "host",
    }
    params["X-Amz-Signature"] = _s3v4_signature(method, path, host, params, creds)
    return urlencode(params)


def verify_s3v4(
    method: str,
    path: str,
    host: str,
    query: Mapping[str, str],
    now: float,
    creds: Credentials,
) -> SignatureProblem | None:
    """None if ``query`` is a valid, unexpired SigV4 pre-signature of ``method path``."""
    names = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    try:
        params = {name: query[name] for name in names}
        signed_at = _parse_amz_date(params["X-Amz-Date"])
        expires_in = int(params["X-Amz-Expires"])
        access_key, scope = params["X-Amz-Credential"].split("/", 1)
        if len(scope.split("/")) != 4:
            raise ValueError(scope)
    except (KeyError, ValueError):
        return SignatureProblem(
            400,
            "AuthorizationQueryParametersError",
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters.",
        )
    if access_key != creds.access_key:
        return SignatureProblem(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    extra = {k: v for k, v in query.items() if k.startswith("X-Amz-") and k not in params}
    expected = _s3v4_signature(method, path, host, {**params, **extra}, creds)
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        return _signature_mismatch()
    if now > signed_at + expires_in:
        return SignatureProblem(403, "AccessDenied", "Request has expired")
    return None


def _signature_mismatch() -> SignatureProblem:
    return SignatureProblem(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    )


# --- Azure SAS ------------------------------------------------------------------------------


def _azure_signature(
    permissions: str, start: str, expiry: str, path: str, version: str, creds: Credentials
) -> str:
    resource = f"/blob/{creds.account}{unquote(path)}"
    string_to_sign = "\n".join(
        [permissions, start, expiry, resource, "", "", "", version, "", "", "", "", ""]
    )
    key = base64.b64decode(creds.account_key)
    return base64.b64encode(
        hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()


def sign_azure(path: str, now: float, validity: int, creds: Credentials) -> str:
    """Query string ``sv=…&st=…&se=…&sr=b&sp=r&sig=…`` of a read-only blob SAS."""
    start, expiry = _iso(now), _iso(now + validity)
    sig = _azure_signature("r", start, expiry, path, AZURE_VERSION, creds)
    return urlencode(
        {"sv": AZURE_VERSION, "st": start, "se": expiry, "sr": "b", "sp": "r", "sig": sig}
    )


def verify_azure(
    path: str, query: Mapping[str, str], now: float, creds: Credentials
) -> SignatureProblem | None:
    """None if ``query`` is a valid SAS granting read on ``path`` at ``now``."""
    try:
        version, start, expiry, permissions, sig = (
            query["sv"],
            query["st"],
            query["se"],
            query["sp"],
            query["sig"],
        )
        not_before, not_after = _parse_iso(start), _parse_iso(expiry)
    except (KeyError, ValueError):
        return _azure_auth_failed("Signature fields not well formed.")
    expected = _azure_signature(permissions, start, expiry, path, version, creds)
    if not hmac.compare_digest(expected, sig):
        return _azure_auth_failed(
            f"Signature did not match. String to sign used was {permissions}\n{start}\n{expiry}"
        )
    if "r" not in permissions:
        return SignatureProblem(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        )
    if not not_before <= now <= not_after:
        return _azure_auth_failed(
            f"Signed expiry time [{expiry}] has to be after signed start time "
            f"[{start}] and current time [{_iso(now)}]"
            if now > not_after
            else f"Signature not valid in the specified time frame: Start [{start}]"
        )
    return None


def _azure_auth_failed(detail: str) -> SignatureProblem:
    return SignatureProblem(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization "
        f"header is formed correctly including the signature.|{detail}",
    )


# --- Dispatch by kind -----------------------------------------------------------------------


def sign(
    kind: SignedKind,
    method: str,
    path: str,
    host: str,
    now: float,
    validity: int,
    creds: Credentials,
) -> str:
    """The query string that pre-signs ``method host path`` for ``validity`` seconds."""
    if kind == "s3v2":
        return sign_s3v2(method, path, now, validity, creds)
    if kind == "s3v4":
        return sign_s3v4(method, path, host, now, validity, creds)
    return sign_azure(path, now, validity, creds)


def expiry_of(query: Mapping[str, str]) -> float | None:
    """When a signed URL stops working, read from the URL alone (what clients must do)."""
    try:
        if "Expires" in query:
            return float(int(query["Expires"]))
        if "X-Amz-Date" in query:
            return _parse_amz_date(query["X-Amz-Date"]) + int(query["X-Amz-Expires"])
        if "se" in query:
            return _parse_iso(query["se"])
    except (KeyError, ValueError):
        return None
    return None
