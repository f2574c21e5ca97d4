"""The counters a running mount keeps, for ``davfed status``, xattrs, metrics and the log.

Owns: :class:`Telemetry`, the :class:`~davfed_fuse.net.observe.Observer` the
federation reports to (per-endpoint requests, bytes, errors, status classes;
failovers, retries, redirects, metalinks; transfers in flight), what the FUSE
handlers add (bytes the kernel read, read latency, errors by errno), and the
last warnings of the log (:class:`WarningKeeper`).
Must not import: pyfuse3, trio or httpx (plain Python: counted on the event loop,
read from any thread).

Cost: the read path pays a few integer additions and one :func:`bisect.bisect_left`
per FUSE read (:meth:`Telemetry.read_done`), and a dict lookup and a few additions
per HTTP exchange (a block of MiBs); ``bench/telemetry.py`` measures both.
Prometheus reads these numbers when it scrapes (``daemon.metrics``): nothing on
the read path touches a lock.
"""

from __future__ import annotations

import bisect
import collections
import errno
import logging
import time
from dataclasses import dataclass, field

from davfed_fuse.net.observe import Exchange
from davfed_fuse.redaction import redact

#: Read latency bucket bounds, seconds (warm reads are sub-millisecond, cold ones not).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: How long "recently" is for health: every endpoint failed within this many seconds.
RECENT = 60.0


class Histogram:
    """Counts per bucket (the last one is +Inf), their sum and count: Prometheus' shape."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)``, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx``, or ``none`` when no answer arrived (connection error)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


@dataclass(slots=True)
class Endpoint:
    """What one host (an endpoint, or the federation itself) did for this mount."""

    host: str
    requests: int = 0
    bytes: int = 0
    errors: int = 0
    seconds: float = 0.0  # spent in its transfers
    statuses: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    last_ok_mono: float | None = None
    last_error_mono: float | None = None


class Telemetry:
    """The mount's counters (see the module's docstring for their cost)."""

    def __init__(self) -> None:
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.kernel_bytes = 0
        self.kernel_reads = 0
        self.read_cold = Histogram()
        self.read_warm = Histogram()
        self.endpoints: dict[str, Endpoint] = {}
        self.failovers = self.retries = self.redirects = self.metalinks = 0
        self.downloads = 0  # storage GETs that succeeded (CVMFS' ndownload)
        self.storage_bytes = 0  # body bytes from storage endpoints (rx)
        self.storage_seconds = 0.0
        self.errnos: dict[str, int] = {}
        self.ioerrors = 0  # EIO (and ETIMEDOUT) answers to the kernel
        self.last_ioerror_at: float | None = None
        self.in_flight = {False: 0, True: 0}  # storage transfers running, by readahead
        self.current_host: str | None = None  # the endpoint that served the last read

    # -- the observer the federation reports to ------------------------------------

    def begin(self, readahead: bool) -> None:
        self.in_flight[readahead] += 1

    def exchange(self, ex: Exchange) -> None:
        host = ex.host
        endpoint = self.endpoints.get(host)
        if endpoint is None:
            endpoint = self.endpoints[host] = Endpoint(host)
        endpoint.requests += 1
        endpoint.bytes += ex.got
        endpoint.seconds += ex.took
        klass = status_class(ex.status)
        endpoint.statuses[klass] = endpoint.statuses.get(klass, 0) + 1
        if ex.error is None:
            if not ex.federation:  # the federation's 302 says nothing of the data's health
                endpoint.last_ok_mono = time.monotonic()
        elif ex.error != "cancelled":
            endpoint.errors += 1
            endpoint.last_error = ex.error
            endpoint.last_error_at = time.time()
            endpoint.last_error_mono = time.monotonic()
        if not ex.federation:
            self.in_flight[ex.transaction.readahead] -= 1
            self.storage_bytes += ex.got
            self.storage_seconds += ex.took
            if ex.error is None:
                self.downloads += 1
                self.current_host = host

    def event(self, name: str) -> None:
        if name == "failover":
            self.failovers += 1
        elif name == "retry":
            self.retries += 1
        elif name == "redirect":
            self.redirects += 1
        elif name == "metalink":
            self.metalinks += 1

    # -- what the FUSE handlers add -----------------------------------------------

    def read_done(self, size: int, seconds: float, cold: bool) -> None:
        """A FUSE read returned ``size`` bytes after ``seconds`` (``cold``: it fetched)."""
        self.kernel_bytes += size
        self.kernel_reads += 1
        (self.read_cold if cold else self.read_warm).observe(seconds)

    def errno_answered(self, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        self.errnos[name] = self.errnos.get(name, 0) + 1
        if code in (errno.EIO, errno.ETIMEDOUT):
            self.ioerrors += 1
            self.last_ioerror_at = time.time()

    # -- derived -------------------------------------------------------------------

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono

    def speed(self) -> float:
        """Average speed of storage transfers, bytes per second (0 before any)."""
        return self.storage_bytes / self.storage_seconds if self.storage_seconds > 0 else 0.0

    def all_failing(self, now: float | None = None) -> bool:
        """Every storage endpoint used in the last minute failed, and its last try too."""
        now = time.monotonic() if now is None else now
        recent = 0
        for endpoint in list(self.endpoints.values()):
            ok, failed = endpoint.last_ok_mono, endpoint.last_error_mono
            if ok is not None and now - ok < RECENT and (failed is None or ok > failed):
                return False  # this one works
            if failed is not None and now - failed < RECENT:
                recent += 1
        return recent > 0


class WarningKeeper(logging.Handler):
    """Keeps the last ``size`` warnings and errors of the log (their redacted messages)."""

    def __init__(self, size: int = 10) -> None:
        super().__init__(logging.WARNING)
        self.kept: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = redact(record.getMessage())
        except Exception:  # a bad format string: never fail the logging call
            message = str(record.msg)
        self.kept.append((record.created, record.levelname.lower(), message))

    def recent(self) -> list[dict[str, object]]:
        return [{"time": t, "level": lv, "message": m} for t, lv, m in list(self.kept)]
