"""Fixtures for the block cache tests: a fake fetcher over random bytes and a cache factory
that runs the fsck-style invariant checker after every test."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from davfed_fuse.cache.blockcache import BlockCache, FileIdentity
from davfed_fuse.cache.invariants import check_invariants

BS = 1000  # small blocks keep the tests fast; nothing depends on a power of two


class FakeFetcher:
    """Serves byte ranges of ``data``; counts calls and the largest concurrency seen."""

    def __init__(self, data: bytes, *, delay: float = 0.0) -> None:
        self.data = data
        self.delay = delay
        self.calls: list[tuple[int, int]] = []
        self.running = 0
        self.max_running = 0
        self.fail: Exception | None = None
        self.short = False

    async def __call__(self, start: int, end: int) -> bytes:
        self.calls.append((start, end))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await trio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return self.data[start : end - 1 if self.short else end]
        finally:
            self.running -= 1

    def blocks_fetched(self, bs: int = BS) -> list[int]:
        """Block indices covered by the calls so far, in call order (with repeats)."""
        return [i for s, e in self.calls for i in range(s // bs, -(-e // bs))]


def make_source(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def ident_for(
    data: bytes, url: str = "https://fed.example/data/f1", etag: str = "e1"
) -> FileIdentity:
    return FileIdentity(url=url, size=len(data), etag=etag, mtime_ns=1_700_000_000_000_000_000)


MakeCache = Callable[..., BlockCache]


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_cache(cache_root: Path) -> Iterator[MakeCache]:
    """Build caches (default: ``cache_root``, block size ``BS``, 1 GiB cap); at teardown
    check the invariants of every cache still open, then close it."""
    made: list[BlockCache] = []

    def make(root: Path | None = None, **kw: Any) -> BlockCache:
        kw.setdefault("block_size", BS)
        kw.setdefault("max_bytes", 1 << 30)
        cache = BlockCache(root or cache_root, **kw)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        if not cache._closed:
            check_invariants(cache)
            cache.close()
