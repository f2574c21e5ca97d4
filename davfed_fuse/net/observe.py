"""What the federation's read loop tells an observer, and the ECS record of each exchange.

Owns: :class:`Transaction` (one :meth:`Federation.read <davfed_fuse.net.federation.Federation.read>`
call: its ``trace.id``, file, lane, retries and failovers so far), :class:`Exchange`
(one HTTP exchange of it: the federation's 302, or a GET of data), :class:`Observer`
(what the daemon passes in to count them; :class:`NullObserver` by default), and
:func:`log_exchange`, the one log record per exchange with ECS field names.
Must not import: pyfuse3, the cache, the daemon, trio or httpx (a pure module).

The read loop calls the observer on the event loop only, never from a worker
thread, so an observer needs no lock; each call must be cheap (it is on the read path).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from davfed_fuse.redaction import redact_url

log = logging.getLogger("davfed_fuse.transfer")

#: The ECS version the records follow (``ecs.version``).
ECS_VERSION = "8.11.0"


@dataclass(slots=True)
class Transaction:
    """One read of a file's range: every exchange it makes shares ``trace_id``."""

    trace_id: str
    path: str
    readahead: bool  # read-ahead's transfer, or a reader waiting for it (direct)
    retries: int = 0  # rounds over the replicas after the first
    failovers: int = 0  # replicas given up on

    @classmethod
    def new(cls, path: str, *, readahead: bool) -> Transaction:
        return cls(os.urandom(16).hex(), path, readahead)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP exchange of a transaction, once it is over."""

    transaction: Transaction
    url: str
    start: int
    end: int
    got: int  # body bytes received
    status: int  # HTTP status (0: none arrived)
    error: str | None  # None: it did what it was for
    took: float  # seconds
    federation: bool  # with the federation itself (its 302, or data it served)

    @property
    def host(self) -> str:
        """``host`` or ``host:port`` (with an explicit port): one endpoint."""
        netloc = urlsplit(self.url).netloc
        return netloc.rpartition("@")[2]


class Observer(Protocol):
    """Told of every exchange and event of the read loop (cheaply, on the event loop)."""

    def begin(self, readahead: bool) -> None:
        """A storage transfer starts (``exchange`` follows when it is over)."""

    def exchange(self, exchange: Exchange) -> None:
        """An exchange is over."""

    def event(self, name: str) -> None:
        """``failover``, ``retry``, ``metalink`` or ``redirect`` happened once."""


class NullObserver:
    """Counts nothing."""

    def begin(self, readahead: bool) -> None:
        return None

    def exchange(self, exchange: Exchange) -> None:
        return None

    def event(self, name: str) -> None:
        return None


def ecs_fields(ex: Exchange) -> dict[str, object]:
    """The ECS fields of one exchange's record (``extra=`` of its log call); no secret."""
    parts = urlsplit(ex.url)
    tx = ex.transaction
    if ex.federation:
        action = "redirect" if ex.status in (301, 302, 303, 307, 308) else "federation-read"
    else:
        action = "read"
    fields: dict[str, object] = {
        "ecs.version": ECS_VERSION,
        "event.kind": "event",
        "event.category": ["network"],
        "event.type": ["access"],
        "event.dataset": "davfed.transfer",
        "event.action": action,
        "event.outcome": "success" if ex.error is None else "failure",
        "event.duration": int(ex.took * 1e9),
        "trace.id": tx.trace_id,
        "destination.domain": parts.hostname or "",
        "url.scheme": parts.scheme,
        "url.path": parts.path,
        "file.path": "/" + tx.path,
        "http.request.method": "GET",
        "http.response.body.bytes": ex.got,
        "davfed.range": f"{ex.start}-{ex.end - 1}",
        "davfed.retries": tx.retries,
        "davfed.failovers": tx.failovers,
        "davfed.read": "readahead" if tx.readahead else "direct",
    }
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        fields["destination.port"] = port
    if ex.status:
        fields["http.response.status_code"] = ex.status
    if ex.error is not None:
        fields["error.message"] = ex.error
    return fields


def log_exchange(ex: Exchange) -> None:
    """One log record for ``ex`` (INFO; JSON lines carry :func:`ecs_fields`).

    Dynafed never learns whether the client's transfer after its redirect worked;
    the client does, so it records it, with the redirect's ``trace.id``.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    log.info(
        "GET %s bytes %d-%d: %s",
        redact_url(ex.url),
        ex.start,
        ex.end - 1,
        ("ok" if ex.error is None else ex.error)
        + (f" (HTTP {ex.status})" if ex.status and ex.error is None else ""),
        extra=ecs_fields(ex),
    )
