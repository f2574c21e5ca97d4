"""Endpoint health, the way Dynafed's status checker sees it, and replica ordering.

Owns: :func:`is_online` and :func:`order_endpoints` (pure), and
:class:`HealthChecker`, which every ``period`` seconds sends a ``HEAD`` to each
endpoint's checker URL and records whether it is online: a 2xx/3xx/404 answer
(400 too for Azure) within ``max_latency`` seconds. Between two rounds the
recorded state is what the federation uses, stale or not: that window is real.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

import aiohttp

from davfed_testfed.storage import Endpoint


def is_online(kind: str, status: int | None, latency: float, max_latency: float) -> bool:
    """Dynafed's verdict on one check (``status`` None: no HTTP answer at all)."""
    if status is None or latency > max_latency:
        return False
    return 200 <= status < 400 or status == 404 or (kind == "azure" and status == 400)


def order_endpoints(
    ranks: Sequence[int],
    online: Sequence[bool],
    shuffle: bool,
    rng: random.Random,
) -> list[int]:
    """Online endpoints, nearest ("lowest geo rank") first; ties shuffled if asked."""
    keys = {i: (ranks[i], rng.random() if shuffle else float(i)) for i in range(len(ranks))}
    return sorted((i for i in range(len(ranks)) if online[i]), key=keys.__getitem__)


class HealthChecker:
    """Periodic HEAD checks of every endpoint; the only owner of the online flags."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        period: float,
        max_latency: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._period = period
        self._max_latency = max_latency
        self._clock = clock
        self.online = [False] * len(endpoints)
        self.rounds = 0
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None

    async def _check(self, index: int) -> bool:
        endpoint = self._endpoints[index]
        assert self._session is not None
        started = self._clock()
        status: int | None = None
        try:
            async with self._session.head(
                endpoint.check_url(time.time()),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._max_latency + 0.05),
            ) as response:
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            status = None
        return is_online(endpoint.info.kind, status, self._clock() - started, self._max_latency)

    async def check_once(self) -> None:
        """One round: check all endpoints concurrently, then publish the results."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False
            )
        results = await asyncio.gather(*(self._check(i) for i in range(len(self._endpoints))))
        async with self._changed:
            self.online = list(results)
            self.rounds += 1
            self._changed.notify_all()

    async def run(self) -> None:
        """Check forever, ``period`` seconds between rounds."""
        while True:
            await asyncio.sleep(self._period)
            await self.check_once()

    async def wait_for(self, index: int, online: bool, timeout: float) -> bool:
        """Wait until endpoint ``index`` is recorded as ``online``; False on timeout."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.online[index] == online)
                return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
