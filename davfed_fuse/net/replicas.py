"""The federation's replica policy: where a file's bytes are fetched from, and when to retry.

Owns: each file's remembered redirect target (:class:`Targets`: until shortly
before its signed expiry, else for a while; bounded in number), the endpoints
passed over after a failure (:class:`Penalties`), the choice of the next replica
of a round (:func:`next_replica`) and the wait between rounds (:func:`backoff`,
davfed's one backoff).
Must not import: httpx, trio, pyfuse3, the cache. Pure bookkeeping: the clock is
injected and nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachetools import TLRUCache

from davfed_fuse.net.http import Origin, origin
from davfed_fuse.net.signedurl import renew_at

#: Seconds a target without an expiry in its URL is reused before asking again.
TARGET_TTL = 600.0
#: Files whose targets are remembered at most (the least recently used leave first).
MAX_TARGETS = 65536


def backoff(round_number: int, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds to wait before retry round ``round_number`` (1, 2, ...): exponential, jittered."""
    delay: float = min(cap, base * 2.0 ** (round_number - 1))
    return delay * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the federation sent us for one file, and until when to believe it."""

    url: str
    renew_at: float | None  # wall-clock seconds; None: no expiry in the URL


class Targets:
    """Each file's redirect target, reused for its reads until it is due for renewal.

    A target leaves at :func:`~davfed_fuse.net.signedurl.renew_at` if its URL says
    when it expires, else ``ttl`` seconds after it was learnt; at most ``maxsize``
    are kept (the least recently used leave first). ``clock``: wall-clock seconds.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float = TARGET_TTL,
        maxsize: int = MAX_TARGETS,
    ) -> None:
        self._clock = clock
        self._ttl = ttl

        def until(_path: str, target: Target, now: float) -> float:
            return target.renew_at if target.renew_at is not None else now + ttl

        self._targets: TLRUCache[str, Target] = TLRUCache(maxsize, until, timer=clock)

    def get(self, path: str) -> str | None:
        target = self._targets.get(path)
        return None if target is None else target.url

    def remember(self, path: str, url: str) -> None:
        self._targets[path] = Target(url, renew_at(url, now=self._clock()))

    def forget(self, path: str) -> None:
        self._targets.pop(path, None)

    def __len__(self) -> int:
        self._targets.expire()
        return len(self._targets)


class Penalties:
    """Endpoints that failed recently, passed over for ``penalty`` seconds while others are left."""

    def __init__(self, clock: Callable[[], float], penalty: float = 30.0) -> None:
        self._clock = clock
        self.penalty = penalty
        self._until: dict[Origin, float] = {}

    def penalise(self, url: str) -> None:
        self._until[origin(url)] = self._clock() + self.penalty

    def __contains__(self, url: object) -> bool:
        """Whether the endpoint of ``url`` is penalised now."""
        assert isinstance(url, str)
        key = origin(url)
        until = self._until.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[key]
            return False
        return True


def next_replica(replicas: Iterable[str], tried: set[Origin], penalties: Penalties) -> str | None:
    """The first replica of this round not tried yet, preferring unpenalised ones."""
    fresh = [url for url in replicas if origin(url) not in tried]
    for url in fresh:
        if url not in penalties:
            return url
    return fresh[0] if fresh else None
