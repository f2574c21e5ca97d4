"""WLCG-style bearer tokens of the test federation: compact JWS, HS256, a test key.

Owns: :func:`make_jwt`, :func:`verify_jwt` and :class:`TokenError`. Only the
standard library is used, so the plain (HTTP) federation never needs
``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(claims: Mapping[str, Any], key: bytes) -> str:
    """A compact JWS (HS256) of ``claims``."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


class TokenError(ValueError):
    """A bearer token that must be refused (the message says why, never the token)."""


def verify_jwt(token: str, key: bytes, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid HS256 token signed with ``key``.

    Raises:
        TokenError: malformed, wrong algorithm or signature, not yet valid, or expired.
    """
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("unsupported token algorithm")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad token signature")
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= now:
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf > now + 60:
        raise TokenError("token not yet valid")
    return claims
