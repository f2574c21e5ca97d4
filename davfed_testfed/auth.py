"""Who the client is, and what Dynafed's simple authorization lets it do.

Owns:

* :func:`identity_from_chain`: the user's DN and VOMS FQANs from the PEM chain
  Apache forwards (mod_ssl's ``SSL_CLIENT_CERT`` and ``SSL_CLIENT_CERT_CHAIN_n``).
  The DN is the subject of the end-entity certificate: the first certificate of
  the chain without the RFC 3820 ProxyCertInfo extension, so a proxy (or a proxy
  of a proxy) maps to its owner. FQANs come from the VOMS attribute certificates
  in the proxy's extension 1.3.6.1.4.1.8005.100.100.5; an AC counts only if it is
  signed by a trusted VOMS server certificate and is within its validity.
* :func:`identity_from_token`: ``Authorization: Bearer`` with a test JWT; the
  client name is ``sub`` and the groups are ``wlcg.groups``.
* :class:`Rules`: ``glb.allowusers[]``/``glb.allowgroups[]`` with the semantics of
  UGR's ``UgrAuthorizationPlugin::isallowed``: no rules allow everything; a user
  rule matches the exact client name (DN) and a path prefix (plain string prefix);
  a group rule matches an FQAN exactly, or by prefix if it ends with ``*``; the
  mode letter must be among the rule's modes. ``""`` as a group matches a client
  with no FQANs at all (anonymous, plain proxies, tokens without groups).

FQANs are compared in VOMS's short form: ``/belle/Role=NULL/Capability=NULL``
is ``/belle`` and ``/belle/Role=prod/Capability=NULL`` is ``/belle/Role=prod``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import logging
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from davfed_testfed.apache import (
    CERT_HEADER,
    CHAIN_DEPTH,
    CHAIN_HEADER,
    SECRET_HEADER,
    VERIFY_HEADER,
)
from davfed_testfed.pki import dn_of
from davfed_testfed.tokens import TokenError, verify_jwt

log = logging.getLogger(__name__)

PROXY_CERT_INFO = "1.3.6.1.5.5.7.1.14"
VOMS_AC_EXTENSION = "1.3.6.1.4.1.8005.100.100.5"
VOMS_FQAN_ATTRIBUTE = "1.3.6.1.4.1.8005.100.100.4"
ANONYMOUS = "nobody"  # Dynafed's NSAnon

_SIG_HASHES: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.1.1.5": hashes.SHA1(),
    "1.2.840.113549.1.1.11": hashes.SHA256(),
    "1.2.840.113549.1.1.12": hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
    "1.2.840.10045.4.3.2": hashes.SHA256(),
    "1.2.840.10045.4.3.3": hashes.SHA384(),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """The client as the rules see it."""

    name: str  # a DN ("/DC=org/DC=test/CN=Alice"), a token's sub, or "nobody"
    fqans: tuple[str, ...] = ()
    via: str = "anonymous"  # "x509" | "token" | "anonymous"


# --- a minimal DER reader (enough for VOMS attribute certificates) ---------------------------


@dataclass(frozen=True, slots=True)
class _Tlv:
    tag: int
    raw: bytes  # the whole element, header included
    content: bytes

    def children(self) -> list[_Tlv]:
        return list(_parse_all(self.content))


def _parse_one(data: bytes, pos: int) -> tuple[_Tlv, int]:
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    header = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + 2 + count > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        header += count
    end = pos + header + length
    if end > len(data):
        raise ValueError("truncated DER")
    return _Tlv(tag, data[pos:end], data[pos + header : end]), end


def _parse_all(data: bytes) -> Iterator[_Tlv]:
    pos = 0
    while pos < len(data):
        element, pos = _parse_one(data, pos)
        yield element


def _oid(content: bytes) -> str:
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _generalized_time(content: bytes) -> dt.datetime:
    text = content.decode("ascii").rstrip("Z")
    return dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)


_SEQUENCE, _SET, _OID, _BIT_STRING, _OCTET_STRING, _GENTIME = 0x30, 0x31, 0x06, 0x03, 0x04, 0x18


def _walk(element: _Tlv) -> Iterator[_Tlv]:
    yield element
    if element.tag in (_SEQUENCE, _SET) or element.tag & 0x20:
        try:
            for child in element.children():
                yield from _walk(child)
        except ValueError:
            return


def _attribute_certificates(extension_value: bytes) -> Iterator[_Tlv]:
    """Every ``AttributeCertificate`` (SEQUENCE {acinfo, algorithm, BIT STRING}) inside."""
    for top in _parse_all(extension_value):
        for element in _walk(top):
            if element.tag != _SEQUENCE:
                continue
            try:
                kids = element.children()
            except ValueError:
                continue
            if (
                len(kids) == 3
                and kids[0].tag == _SEQUENCE
                and kids[1].tag == _SEQUENCE
                and kids[2].tag == _BIT_STRING
            ):
                info = kids[0].children()
                if info and info[0].tag == 0x02:  # acinfo starts with its version INTEGER
                    yield element


def _verify_ac(ac: _Tlv, trusted: Sequence[x509.Certificate]) -> bool:
    info, algorithm, signature = ac.children()
    sig_oid = _oid(algorithm.children()[0].content)
    digest = _SIG_HASHES.get(sig_oid)
    if digest is None:
        return False
    sig = signature.content[1:]  # BIT STRING: first byte counts unused bits
    for cert in trusted:
        key = cert.public_key()
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, info.raw, padding.PKCS1v15(), digest)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(sig, info.raw, ec.ECDSA(digest))
            else:
                continue
            return True
        except InvalidSignature:
            continue
    return False


def _ac_fqans(ac: _Tlv, now: dt.datetime) -> list[str]:
    info = ac.children()[0]
    fqans: list[str] = []
    valid = False
    for element in info.children():
        if element.tag == _SEQUENCE:
            kids = element.children()
            if len(kids) == 2 and all(k.tag == _GENTIME for k in kids):
                not_before, not_after = (_generalized_time(k.content) for k in kids)
                valid = not_before <= now <= not_after
            for attribute in kids:
                parts = attribute.children() if attribute.tag == _SEQUENCE else []
                if (
                    len(parts) == 2
                    and parts[0].tag == _OID
                    and _oid(parts[0].content) == VOMS_FQAN_ATTRIBUTE
                ):
                    fqans += [
                        leaf.content.decode("utf-8", "replace")
                        for leaf in _walk(parts[1])
                        if leaf.tag == _OCTET_STRING
                    ]
    return fqans if valid else []


def voms_fqans(
    cert: x509.Certificate, trusted: Sequence[x509.Certificate], now: dt.datetime | None = None
) -> list[str]:
    """The FQANs of the valid, trusted VOMS ACs in ``cert`` (in the order VOMS lists them)."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(VOMS_AC_EXTENSION))
    except x509.ExtensionNotFound:
        return []
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    now = now or dt.datetime.now(dt.UTC)
    fqans: list[str] = []
    try:
        for ac in _attribute_certificates(raw):
            if not _verify_ac(ac, trusted):
                log.warning("VOMS AC not signed by a trusted VOMS server; ignored")
                continue
            fqans.extend(_ac_fqans(ac, now))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        log.warning("unreadable VOMS extension ignored: %s", exc)
        return []
    return fqans


def short_fqan(fqan: str) -> str:
    """VOMS's short form: drop ``/Role=NULL`` and ``/Capability=NULL``."""
    parts = [p for p in fqan.split("/") if p not in ("Role=NULL", "Capability=NULL")]
    return "/".join(parts)


def is_proxy(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(PROXY_CERT_INFO))
    except x509.ExtensionNotFound:
        return False
    return True


def decode_forwarded_pem(value: str) -> x509.Certificate | None:
    """A certificate Apache forwarded base64-encoded (``%{base64:%{SSL_CLIENT_CERT}}``)."""
    value = value.strip()
    if not value:
        return None
    try:
        pem = base64.b64decode(value, validate=False)
        return x509.load_pem_x509_certificate(pem) if pem.strip() else None
    except ValueError:
        return None


def identity_from_chain(
    chain: Sequence[x509.Certificate], trusted_voms: Sequence[x509.Certificate]
) -> Identity | None:
    """The user of a verified client chain (leaf first): its DN and VOMS FQANs."""
    if not chain:
        return None
    end_entity = next((c for c in chain if not is_proxy(c)), chain[-1])
    fqans: list[str] = []
    for cert in chain:
        if not is_proxy(cert):
            break
        fqans = voms_fqans(cert, trusted_voms)
        if fqans:
            break
    seen: dict[str, None] = {}
    for fqan in fqans:
        seen.setdefault(short_fqan(fqan), None)
    return Identity(dn_of(end_entity.subject), tuple(seen), "x509")


def identity_from_token(token: str, key: bytes) -> Identity:
    """The identity in a valid test JWT.

    Raises:
        TokenError: the token must be refused.
    """
    claims = verify_jwt(token, key)
    groups = claims.get("wlcg.groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise TokenError("wlcg.groups is not a list of strings")
    return Identity(
        str(claims.get("sub", ANONYMOUS)), tuple(short_fqan(g) for g in groups), "token"
    )


# --- rules ------------------------------------------------------------------------------------


class RulesError(ValueError):
    """A malformed rules line (the message names it)."""


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # "user" | "group"
    subject: str  # DN or name; a group ("" = no FQANs; trailing "*" = prefix)
    prefix: str  # a path prefix, compared as a plain string (Dynafed's strncmp)
    modes: str  # letters of rwldc

    def line(self) -> str:
        what = "allowusers" if self.kind == "user" else "allowgroups"
        subject = self.subject
        if not subject or any(c.isspace() or c in "\"'#" for c in subject):
            subject = '"' + subject.replace('"', '\\"') + '"'
        return f"glb.{what}[]: {subject} {self.prefix} {self.modes}"


def parse_rule(line: str) -> Rule | None:
    """One line: ``[glb.]allowusers[[]][:] <DN|user> <prefix> <modes>`` (or ``allowgroups``).

    The subject may be quoted (DNs with spaces; ``""`` is the empty FQAN list);
    blank lines and ``#`` comments give None.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise RulesError(f"bad rules line {line!r}: {exc}") from None
    key = words[0].removeprefix("glb.").rstrip(":").removesuffix("[]")
    if key not in ("allowusers", "allowgroups") or len(words) != 4:
        raise RulesError(
            f"bad rules line {line!r}: expected "
            "'allowusers|allowgroups <DN|user|group> <prefix> <modes>'"
        )
    subject, prefix, modes = words[1:]
    if not prefix.startswith("/"):
        raise RulesError(f"bad rules line {line!r}: the prefix must start with /")
    if not modes or set(modes) - set("rwldc"):
        raise RulesError(f"bad rules line {line!r}: modes are letters of rwldc")
    return Rule("user" if key == "allowusers" else "group", subject, prefix, modes)


class Rules:
    """Dynafed's ``glb.allowusers``/``glb.allowgroups``; replaceable at run time."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Rules:
        return cls(r for r in (parse_rule(line) for line in lines) if r is not None)

    @classmethod
    def load(cls, path: Path) -> Rules:
        try:
            text = path.read_text()
        except OSError as exc:
            raise RulesError(f"cannot read auth rules {path}: {exc.strerror}") from None
        return cls.parse(text.splitlines())

    def lines(self) -> list[str]:
        return [r.line() for r in self.rules]

    def allowed(self, who: Identity, path: str, mode: str) -> bool:
        """Whether ``who`` may do ``mode`` (one of rwldc) on ``path`` (the full URL path)."""
        if not self.rules:
            return True
        for rule in self.rules:
            if rule.kind != "user" or mode not in rule.modes:
                continue
            if rule.subject == who.name and path.startswith(rule.prefix):
                return True
        for rule in self.rules:
            if rule.kind != "group" or mode not in rule.modes:
                continue
            if not path.startswith(rule.prefix):
                continue
            if rule.subject == "":
                if not who.fqans:
                    return True
                continue
            for fqan in who.fqans:
                if len(rule.subject) > 2 and rule.subject.endswith("*"):
                    if fqan.startswith(rule.subject[:-1]):
                        return True
                elif fqan == rule.subject:
                    return True
        return False


# --- the front end's view ---------------------------------------------------------------------


class Authenticator:
    """Identifies requests and applies :class:`Rules` (the rules may be replaced live).

    ``secret``: the value Apache puts in ``X-Testfed-Secret``; identity headers are
    read only from requests that carry it (HTTPS mode). ``token_key``: the HS256 key
    of test tokens (None: ``Authorization`` is ignored). ``trusted_voms``: the VOMS
    server certificates whose ACs count.
    """

    def __init__(
        self,
        rules: Rules | None = None,
        *,
        secret: str | None = None,
        token_key: bytes | None = None,
        trusted_voms: Sequence[x509.Certificate] = (),
    ) -> None:
        self.rules = rules or Rules()
        self.secret = secret
        self._token_key = token_key
        self._trusted_voms = tuple(trusted_voms)

    def from_apache(self, headers: Mapping[str, str]) -> bool:
        """Whether the request came through our Apache (always True without a secret)."""
        if self.secret is None:
            return True
        return hmac.compare_digest(headers.get(SECRET_HEADER, "").encode(), self.secret.encode())

    def identify(self, headers: Mapping[str, str]) -> Identity:
        """Who sent a request that :meth:`from_apache` accepted.

        A bearer token wins over a client certificate.

        Raises:
            TokenError: an ``Authorization: Bearer`` token that is not valid.
        """
        authorization = headers.get("Authorization", "")
        if self._token_key is not None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenError("only Bearer authorization is accepted")
            return identity_from_token(token.strip(), self._token_key)
        if self.secret is None or headers.get(VERIFY_HEADER, "") != "SUCCESS":
            return Identity(ANONYMOUS)
        chain = [decode_forwarded_pem(headers.get(CERT_HEADER, ""))]
        chain += [
            decode_forwarded_pem(headers.get(CHAIN_HEADER.format(n), ""))
            for n in range(CHAIN_DEPTH)
        ]
        certs = [c for c in chain if c is not None]
        return identity_from_chain(certs, self._trusted_voms) or Identity(ANONYMOUS)

    def allowed(self, who: Identity, path: str, mode: str) -> bool:
        return self.rules.allowed(who, path, mode)
