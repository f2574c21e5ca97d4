"""What a running mount says about itself: the status document, its health, the proxy in use.

Owns: :class:`MountView` (everything ``davfed status``, the root's extended
attributes, the metrics and the periodic summary read, gathered in one place from
the parts the composition root made), :data:`SCHEMA_VERSION` and the document's
shape (docs/operations.md; ``tests/ops`` checks both), :class:`ProxyState`, and
:func:`credential_info` (kind, file, subject, expiry; never the secret itself).
Must not import: pyfuse3 (the handlers read this, not the other way round).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from davfed_fuse import __version__
from davfed_fuse.cache.blockcache import BlockCache
from davfed_fuse.cache.counters import Counters
from davfed_fuse.daemon.telemetry import Telemetry, WarningKeeper
from davfed_fuse.net.credentials import Credentials
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.proxies import describe
from davfed_fuse.net.proxylist import ProxyList
from davfed_fuse.redaction import redact_url

#: Bumped only when a field changes meaning or goes away; new fields may appear.
SCHEMA_VERSION = 1

#: A credential expiring within this many seconds makes the mount degraded.
EXPIRY_WARNING = 3600.0


class ProxyState:
    """The mount's proxy list as status shows it: a view of the run-time
    :class:`~davfed_fuse.net.proxylist.ProxyList` (``DIRECT`` when none was given)."""

    def __init__(self, proxies: ProxyList) -> None:
        self.proxies = proxies
        self.changed_at: float | None = None  # wall clock of the last ctl proxy set

    def info(self) -> dict[str, Any]:
        proxies = self.proxies
        return {
            "in_use": describe(proxies.current()),
            "list": proxies.spec or "DIRECT",
            "order": [describe(p) for p in proxies.all()] or ["DIRECT"],
            "changed_at": self.changed_at,
        }


_cred_cache: dict[tuple[str, int, int], dict[str, Any]] = {}


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT's payload, unverified (only ``sub`` and ``exp`` are used)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def credential_info(credentials: Credentials | None, now: float | None = None) -> dict[str, Any]:
    """kind, source, file, subject, expiry (ISO, UTC), seconds_left: no secret, ever."""
    now = time.time() if now is None else now
    cred = credentials.credential if credentials is not None else None
    info: dict[str, Any] = {
        "kind": None if cred is None else cred.kind,
        "source": None if cred is None else cred.source,
        "file": None if cred is None or cred.path is None else str(cred.path),
        "subject": None,
        "expiry": None,
        "seconds_left": None,
    }
    if cred is None:
        return info
    expires: float | None = None
    try:
        if cred.path is not None:
            st = cred.path.stat()
            key = (str(cred.path), st.st_mtime_ns, st.st_size)
            parsed = _cred_cache.get(key)
            if parsed is None:
                parsed = _parse_credential(cred.kind, cred.path)
                _cred_cache.clear()
                _cred_cache[key] = parsed
        elif cred.value is not None:
            parsed = _claims_info(_jwt_claims(cred.value))
        else:
            parsed = {}
    except OSError:
        parsed = {}
    info["subject"] = parsed.get("subject")
    expires = parsed.get("expires")
    if expires is not None:
        info["expiry"] = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds")
        info["seconds_left"] = int(expires - now)
    return info


def _claims_info(claims: dict[str, Any]) -> dict[str, Any]:
    exp = claims.get("exp")
    sub = claims.get("sub")
    return {
        "subject": sub if isinstance(sub, str) else None,
        "expires": float(exp) if isinstance(exp, int | float) else None,
    }


def _parse_credential(kind: str, path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if kind == "token":
        return _claims_info(_jwt_claims(data.decode(errors="replace")))
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return {}
    return {
        "subject": cert.subject.rfc4514_string(),
        "expires": cert.not_valid_after_utc.timestamp(),
    }


def cache_counters(cache: BlockCache) -> Counters:
    """The cache's live counters (read without building a CacheStats: O(1))."""
    return cache._counters


class MountView:
    """Everything a running mount reports, read from its parts when asked."""

    def __init__(
        self,
        *,
        url: str,
        mountpoint: Path,
        telemetry: Telemetry,
        warnings: WarningKeeper,
        federation: Federation,
        credentials: Credentials | None,
        proxy: ProxyState,
        cache: BlockCache | None,
        open_files: Callable[[], int],
        control_socket: Path | None = None,
    ) -> None:
        self.url = url
        self.mountpoint = mountpoint
        self.telemetry = telemetry
        self.warnings = warnings
        self.federation = federation
        self.credentials = credentials
        self.proxy = proxy
        self.cache = cache
        self.open_files = open_files
        self.control_socket = control_socket

    def hit_rate(self) -> float:
        """Blocks read from the cache over blocks read (0 with no cache or no read)."""
        if self.cache is None:
            return 0.0
        counters = cache_counters(self.cache)
        total = counters.hits + counters.misses
        return counters.hits / total if total else 0.0

    def health(self, credential: dict[str, Any] | None = None) -> tuple[str, list[str]]:
        """``("healthy", [])`` or ``("degraded", [reasons])``."""
        credential = credential or credential_info(self.credentials)
        reasons = []
        left = credential["seconds_left"]
        if left is not None and left < EXPIRY_WARNING:
            reasons.append(
                "the credential has expired"
                if left <= 0
                else f"the credential expires in {left // 60} min"
            )
        if self.telemetry.all_failing():
            reasons.append(f"every endpoint failed in the last {60} s")
        return ("degraded" if reasons else "healthy"), reasons

    def status(self) -> dict[str, Any]:
        """The ``davfed status --json`` document (docs/operations.md: its schema)."""
        t = self.telemetry
        credential = credential_info(self.credentials)
        state, reasons = self.health(credential)
        penalty = self.federation.penalty
        now = time.time()
        endpoints = []
        for e in sorted(list(t.endpoints.values()), key=lambda e: e.host):
            until = None
            if e.last_error_at is not None and e.last_error_at + penalty > now:
                until = e.last_error_at + penalty
            endpoints.append(
                {
                    "host": e.host,
                    "requests": e.requests,
                    "bytes": e.bytes,
                    "errors": e.errors,
                    "statuses": dict(e.statuses),
                    "last_error": e.last_error,
                    "last_error_at": e.last_error_at,
                    "penalised_until": until,
                }
            )
        cache: dict[str, Any] | None = None
        if self.cache is not None:
            c = self.cache.stats()
            cache = {
                "bytes": c.bytes,
                "max_bytes": c.max_bytes,
                "blocks": c.blocks,
                "files": c.files,
                "hits": c.hits,
                "misses": c.misses,
                "hit_rate": round(c.hit_rate, 4),
                "bytes_fetched": c.bytes_fetched,
                "passthrough": c.passthrough,
                "evicted": c.evicted,
            }
        return {
            "schema": SCHEMA_VERSION,
            "health": state,
            "reasons": reasons,
            "url": redact_url(self.url),
            "mountpoint": str(self.mountpoint),
            "version": __version__,
            "pid": os.getpid(),
            "started_at": t.started_wall,
            "uptime": round(t.uptime(), 3),
            "credential": credential,
            "proxy": self.proxy.info(),
            "endpoints": endpoints,
            "current_endpoint": t.current_host,
            "cache": cache,
            "reads": {
                "kernel_bytes": t.kernel_bytes,
                "kernel_reads": t.kernel_reads,
                "storage_bytes": t.storage_bytes,
                "downloads": t.downloads,
                "failovers": t.failovers,
                "retries": t.retries,
                "redirects": t.redirects,
                "metalinks": t.metalinks,
            },
            "open_files": self.open_files(),
            "active_readahead": t.in_flight[True],
            "active_direct": t.in_flight[False],
            "errors": dict(t.errnos),
            "warnings": self.warnings.recent(),
        }

    def summary(self) -> str:
        """The periodic one-line summary for the log."""
        t = self.telemetry
        hosts = sorted(h for h, e in list(t.endpoints.items()) if e.requests)
        errors = sum(e.errors for e in list(t.endpoints.values()))
        return (
            f"stats: read {t.kernel_bytes} B by the kernel, fetched {t.storage_bytes} B "
            f"in {t.downloads} downloads, hit rate {100 * self.hit_rate():.1f}%, "
            f"{errors} HTTP errors, {t.ioerrors} I/O errors, {t.failovers} failovers, "
            f"endpoints: {', '.join(hosts) or 'none'}"
        )
