"""One log event per transaction with a storage endpoint (ECS field names, for ELK).

Owns: :func:`log_transfer`. Must not import: anything of davfed but ``redaction``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from davfed_fuse.redaction import redact_url

log = logging.getLogger("davfed_fuse.net.transport")  # the name operators filter on


def log_transfer(url: str, start: int, end: int, got: int, error: str | None, took: float) -> None:
    """One log event for a transaction with a storage endpoint (ECS field names, for ELK).

    Dynafed never learns whether the client's transfer after its redirect worked;
    the client does, so it records it. ``error``: None, or what went wrong.
    """
    parts = urlsplit(url)
    log.info(
        "GET %s bytes %d-%d: %s",
        redact_url(url),
        start,
        end - 1,
        "ok" if error is None else error,
        extra={
            "event.action": "read",
            "event.outcome": "success" if error is None else "failure",
            "event.duration": int(took * 1e9),
            "destination.domain": parts.hostname,
            "destination.port": parts.port,
            "url.path": parts.path,
            "http.request.method": "GET",
            "http.response.body.bytes": got,
            "davfed.range": f"{start}-{end - 1}",
        },
    )
