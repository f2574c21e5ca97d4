"""The block cache's counters: hits, misses, bytes fetched, pass-through, evictions.

Owns: :class:`CacheStats` (what ``BlockCache.stats()`` returns) and :class:`Counters`
(the live numbers; the first four persist in the index's ``meta`` table, ``evicted``
counts this process only).
Must not import: any other module of the cache; trio, pyfuse3, httpx (a pure module).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for ``davfed cache stats``; hits and misses count blocks touched by reads."""

    bytes: int
    max_bytes: int
    blocks: int
    files: int
    hits: int
    misses: int
    bytes_fetched: int
    passthrough: int  # fetched blocks that could not be stored (disk full, cap, errors)
    evicted: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


#: The counters kept across restarts, by their ``meta`` key.
PERSISTENT = ("hits", "misses", "bytes_fetched", "passthrough")


class Counters:
    """The live counters. ``hits``/``misses`` count blocks a read touched (served from
    the cache / from a fetch); ``passthrough`` counts fetched blocks not stored."""

    __slots__ = ("bytes_fetched", "evicted", "hits", "misses", "passthrough")

    def __init__(self) -> None:
        self.hits = self.misses = self.bytes_fetched = self.passthrough = self.evicted = 0

    def reset(self) -> None:
        """Every counter back to 0 (``davfed cache clean``)."""
        self.hits = self.misses = self.bytes_fetched = self.passthrough = self.evicted = 0

    def load(self, meta: Mapping[str, int]) -> None:
        """Take the persistent counters from the index's ``meta`` table (missing: 0)."""
        for name in PERSISTENT:
            setattr(self, name, int(meta.get(name, 0)))

    def persistent(self) -> list[tuple[str, int]]:
        """``(meta key, value)`` of the counters kept across restarts."""
        return [(name, getattr(self, name)) for name in PERSISTENT]

    def stats(self, *, bytes: int, max_bytes: int, blocks: int, files: int) -> CacheStats:
        return CacheStats(
            bytes=bytes,
            max_bytes=max_bytes,
            blocks=blocks,
            files=files,
            hits=self.hits,
            misses=self.misses,
            bytes_fetched=self.bytes_fetched,
            passthrough=self.passthrough,
            evicted=self.evicted,
        )
