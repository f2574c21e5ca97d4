"""Block fetches in flight: at most one fetch per ``(identity, block)``.

Owns: the table of blocks being fetched right now and what their waiters get.
Must not import: any other module of the cache but ``model``; pyfuse3, httpx.

Why not :class:`davfed_fuse.singleflight.SingleFlight`: its unit is one key, one call,
one result, handed over when the call returns. A block fetch differs in three ways:
one fetcher call covers a *run* of adjacent blocks (one flight per block, all
registered in one step); waiters get their block's bytes as soon as they arrived,
*before* the call returns (it goes on to write them to disk); and a failed prefetch
hands its waiters nothing, so that they fetch the block themselves instead of failing
with the error of a read they did not ask for. SingleFlight's cancellation rule is the
same here: a cancelled fetch wakes its waiters with nothing, and they retry.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from davfed_fuse.cache.model import FileIdentity

FlightKey = tuple[FileIdentity, int]


class Flight:
    """A fetch in progress. ``event`` is set once ``data`` or ``error`` is known, or the
    fetch was cancelled or was a failed prefetch (both None: waiters fetch themselves)."""

    __slots__ = ("data", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.data: memoryview | None = None
        self.error: Exception | None = None


class Flights:
    """The flights of one cache. Register with :meth:`start` in the same synchronous step
    that found the blocks missing and not in flight; :meth:`finish` in ``finally``."""

    def __init__(self) -> None:
        self._flights: dict[FlightKey, Flight] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[FlightKey]:
        return iter(self._flights)

    def get(self, key: FlightKey) -> Flight | None:
        return self._flights.get(key)

    def start(self, ident: FileIdentity, first: int, last: int) -> list[Flight]:
        """Register one flight per block ``first..last`` of ``ident``."""
        flights = [Flight() for _ in range(first, last + 1)]
        self._flights.update(((ident, k), f) for k, f in enumerate(flights, first))
        return flights

    def finish(self, ident: FileIdentity, first: int, flights: list[Flight]) -> None:
        """Wake every waiter (a no-op for flights already set) and unregister the flights."""
        for k, flight in enumerate(flights, first):
            flight.event.set()
            if self._flights.get((ident, k)) is flight:
                del self._flights[(ident, k)]
