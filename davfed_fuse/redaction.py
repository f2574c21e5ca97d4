"""Secrets never leave davfed: the one list of secret query parameters, and redaction.

Owns: which query parameters authorise a request by themselves, and how a URL,
a log line or an exception message is stripped of them and of credentials.
Used by log records (:mod:`davfed_fuse.logs`), error messages (every
``redact_url``), option echoing and ``davfed cache stats``.
Must not import: anything of davfed (a pure module).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

#: Query parameters that authorise a request by themselves, lower-cased:
#: S3 SigV2 (``Signature``, ``AWSAccessKeyId``) and SigV4 (``X-Amz-*``),
#: Google Cloud Storage V4 (``X-Goog-Signature``, ``X-Goog-Credential``),
#: Azure SAS (``sig``), CloudFront (``Signature``, ``Policy``, ``Key-Pair-Id``),
#: Swift temp URLs (``temp_url_sig``), dCache macaroons (``authz``) and OAuth
#: (``access_token``, ``token``).
SECRET_QUERY_PARAMS = frozenset(
    {
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "sig",
        "policy",
        "key-pair-id",
        "temp_url_sig",
        "authz",
        "access_token",
        "token",
    }
)

REDACTED = "[REDACTED]"

_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in sorted(SECRET_QUERY_PARAMS)) + r")=)"
    r"[^&;\s\"'#<>]*"
)
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-auth-token)"
    r"([\"']?\s*[:=]\s*[\"']?)"
    r"(?:(bearer|basic|negotiate|digest|token)\s+)?"
    r"[^\s\"',}]+"
)
_BEARER = re.compile(r"(?i)\bbearer\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def redact(text: str) -> str:
    """Replace secrets in free ``text`` with ``[REDACTED]``; everything else stays."""
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_HEADER.sub(
        lambda m: m.group(1) + m.group(2) + (f"{m.group(3)} " if m.group(3) else "") + REDACTED,
        text,
    )
    text = _BEARER.sub("Bearer " + REDACTED, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)


def is_secret_param(key: str) -> bool:
    """Whether the query parameter ``key`` (any case) carries a secret."""
    return key.lower() in SECRET_QUERY_PARAMS


def redact_url(url: str) -> str:
    """``url`` with the values of secret query parameters, and any password, replaced by ``...``."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:...@{host}")
    if not parts.query:
        return urlunsplit(parts)
    pairs = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        pairs.append(f"{key}=..." if is_secret_param(key) else f"{key}={value}")
    return urlunsplit(parts._replace(query="&".join(pairs)))
