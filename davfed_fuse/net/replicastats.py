"""What davfed has measured of each storage endpoint, and the choices made from it.

Owns: :class:`HostFigures` (one endpoint host's round-trip estimate and recent
throughput), :class:`Measurements` (every host's figures, fed by davfed's own
transfers and probes), the ranking of a file's replicas by expected transfer time
(:meth:`Measurements.rank`) and the spreading of bulk fetches over several replicas
in proportion to their throughput (:class:`Spread`).
Must not import: httpx, trio, pyfuse3, the cache. Pure bookkeeping: the clock is
injected and nothing here does I/O.

The model of one host (docs/replicas.md): fetching ``n`` bytes takes
``latency + n * cost`` seconds. ``latency`` is the time to first byte of its answers
(reported by the transport; without it, the time of small transfers of at most
:data:`SMALL` bytes: a probe, a random read), ``cost`` (seconds per byte, the inverse
of the rate) from large ones (at least :data:`LARGE` bytes), with the latency taken
off. Both are exponentially weighted moving averages, so that a link that changes
is followed within a few transfers.
Figures older than :data:`STALE` seconds are due for a probe before a choice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from davfed_fuse.net.http import Origin, origin

#: A transfer of at most this many bytes measures latency (a round trip and the server's
#: time to first byte), not throughput.
SMALL = 64 * 1024
#: A transfer of at least this many bytes measures throughput.
LARGE = 1 << 20
#: Weight of a new sample in the moving averages.
ALPHA = 0.5
#: Seconds after which a host's figures are re-probed before the next choice.
STALE = 30.0
#: Throughput assumed of a host whose latency is known but whose rate is not (bytes/s):
#: optimistic, so that an unmeasured low-latency host gets a chance to show its rate.
PRIOR_RATE = 100e6
#: A replica is only used for spread read-ahead while its expected time for a block is
#: within this factor of the best replica's: a much slower one would hold up the stream.
SPREAD_FACTOR = 3.0


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + ALPHA * (sample - old)


@dataclass(slots=True)
class HostFigures:
    """What davfed knows of one endpoint host (scheme, host, port)."""

    latency: float | None = None  # seconds
    cost: float | None = None  # seconds per byte of one transfer (averaged, not its rate:
    # a transfer 10x slower moves the average by 10x its weight, a 10x faster one little)
    updated: float = 0.0  # clock of the last sample
    samples: int = 0
    failures: int = 0

    @property
    def rate(self) -> float | None:
        """Bytes per second of one transfer, if measured."""
        return None if self.cost is None else 1.0 / self.cost

    def expected(self, nbytes: int, prior_rate: float) -> float | None:
        """Seconds to fetch ``nbytes`` from this host; None if its latency is unknown."""
        if self.latency is None:
            return None
        cost = self.cost if self.cost is not None else 1.0 / max(prior_rate, 1.0)
        return self.latency + nbytes * cost


class Measurements:
    """Every endpoint host's figures, learnt from transfers (:meth:`record`)."""

    def __init__(self, clock: Callable[[], float], *, stale: float = STALE) -> None:
        self._clock = clock
        self.stale = stale
        self._hosts: dict[Origin, HostFigures] = {}
        #: Whether latency comes from times to first byte (else from small transfers).
        self.first_bytes = False
        self._lock = threading.Lock()  # first-byte figures come from worker threads

    def record(self, url: str, nbytes: int, seconds: float, error: str | None = None) -> None:
        """One transfer of ``nbytes`` from ``url`` that took ``seconds`` (failed: ``error``).

        A failed transfer counts as a latency sample of its duration (at least the
        current estimate doubled): an endpoint that times out must not stay first.
        """
        with self._lock:
            self._record(url, nbytes, seconds, error)

    def _record(self, url: str, nbytes: int, seconds: float, error: str | None) -> None:
        figures = self._hosts.setdefault(origin(url), HostFigures())
        figures.updated = self._clock()
        figures.samples += 1
        seconds = max(seconds, 1e-6)
        if error is not None:
            figures.failures += 1
            worst = max(seconds, 2 * (figures.latency or 0.0))
            figures.latency = _ewma(figures.latency, worst)
            return
        if nbytes <= SMALL and not self.first_bytes:
            figures.latency = _ewma(figures.latency, seconds)
        elif nbytes >= LARGE:
            latency = figures.latency or 0.0
            # A transfer much slower than the latency estimate: its time is mostly
            # bytes over the wire. If it came in faster than a round trip, the latency
            # estimate is too high: take it down.
            if seconds <= latency:
                figures.latency = _ewma(latency, seconds / 2)
                latency = figures.latency
            figures.cost = _ewma(figures.cost, max(seconds - latency, seconds / 10) / nbytes)

    def record_first_byte(self, url: str, seconds: float) -> None:
        """An answer's head from ``url`` arrived ``seconds`` after its request was sent."""
        with self._lock:
            figures = self._hosts.setdefault(origin(url), HostFigures())
            figures.latency = _ewma(figures.latency, max(seconds, 1e-6))
            figures.updated = self._clock()
            self.first_bytes = True

    def figures(self, url: str) -> HostFigures | None:
        return self._hosts.get(origin(url))

    def needs_probe(self, url: str) -> bool:
        """Whether ``url``'s host has no latency figure, or only a stale one."""
        figures = self._hosts.get(origin(url))
        if figures is None or figures.latency is None:
            return True
        return self._clock() - figures.updated > self.stale

    def prior_rate(self) -> float:
        """The rate assumed of a host without one: the best measured now (hosts differ by
        their latency until shown otherwise; on a shared link, one connection's rate is
        the share it gets), else :data:`PRIOR_RATE`."""
        rates = [1.0 / f.cost for f in self._hosts.values() if f.cost is not None]
        return max(rates, default=PRIOR_RATE)

    def expected(self, url: str, nbytes: int) -> float | None:
        figures = self._hosts.get(origin(url))
        return None if figures is None else figures.expected(nbytes, self.prior_rate())

    def rank(self, replicas: Sequence[str], nbytes: int) -> list[str]:
        """``replicas`` by expected time to fetch ``nbytes``, fastest first.

        Replicas without figures keep the federation's order after the measured ones;
        ties keep the federation's order (the sort is stable).
        """
        prior = self.prior_rate()
        unknown = float("inf")

        def key(url: str) -> float:
            figures = self._hosts.get(origin(url))
            expected = None if figures is None else figures.expected(nbytes, prior)
            return unknown if expected is None else expected

        return sorted(replicas, key=key)

    def table(self) -> dict[str, dict[str, float | int | None]]:
        """Every host's figures, for the status tables (milliseconds and MB/s)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for (scheme, host, port), f in sorted(self._hosts.items()):
            out[f"{scheme}://{host}:{port}"] = {
                "rtt_ms": None if f.latency is None else round(f.latency * 1e3, 2),
                "mb_per_s": None if f.rate is None else round(f.rate / 1e6, 2),
                "samples": f.samples,
                "failures": f.failures,
            }
        return out


class Spread:
    """Assigns a file's bulk fetches to several replicas in proportion to their throughput.

    Each fetch goes to the replica whose share of the bytes assigned so far is
    furthest below its weight (deficit round robin): with rates 2:1, two blocks go
    to the first for each one to the second, whatever the block sizes.
    """

    def __init__(self, replicas: Iterable[str]) -> None:
        self.assigned: dict[str, int] = dict.fromkeys(replicas, 0)

    def pick(self, weights: dict[str, float], nbytes: int) -> str | None:
        """The replica for the next ``nbytes`` (among those weighted); None if none is."""
        usable = [url for url in self.assigned if weights.get(url, 0.0) > 0.0]
        if not usable:
            return None
        total_weight = sum(weights[u] for u in usable)
        total = sum(self.assigned[u] for u in usable) + nbytes

        def deficit(url: str) -> float:
            # How far below its share the replica would be after this fetch went elsewhere.
            return self.assigned[url] - total * weights[url] / total_weight

        best = min(usable, key=deficit)
        self.assigned[best] += nbytes
        return best


def spread_weights(
    measurements: Measurements, replicas: Sequence[str], nbytes: int
) -> dict[str, float]:
    """Weights of ``replicas`` for spread read-ahead: their rate, for those fast enough.

    A replica counts if its expected time for ``nbytes`` is within
    :data:`SPREAD_FACTOR` of the best one's; its weight is ``nbytes`` over that time
    (its effective rate for blocks of that size). Unmeasured replicas get no weight.
    """
    times: dict[str, float] = {}
    for url in replicas:
        expected = measurements.expected(url, nbytes)
        if expected is not None:
            times[url] = expected
    if not times:
        return {}
    best = min(times.values())
    return {u: nbytes / t for u, t in times.items() if t <= SPREAD_FACTOR * best}
