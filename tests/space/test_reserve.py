"""The cache leaves ``cache_min_free`` free on its filesystem: real tmpfs filesystems of a
few MiB, a real block cache, and another writer that fills the disk meanwhile."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.cache.blockcache import BlockCache, FileIdentity
from davfed_fuse.cache.invariants import check_invariants

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 64 * KiB


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and os.path.exists("/proc/filesystems")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    if not _can_mount_tmpfs():
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Source:
    def __init__(self, size: int) -> None:
        self.data = random.Random(3).randbytes(size)
        self.ident = FileIdentity(
            url="https://fed.example/f", size=size, etag="e", mtime_ns=1_700_000_000_000_000_000
        )

    async def __call__(self, start: int, end: int) -> bytes:
        return self.data[start:end]


async def test_the_cache_never_eats_into_the_reserve(small_fs: Path) -> None:
    reserve = 1 * MiB
    now = [0.0]
    source = Source(100 * BLOCK)
    cache = BlockCache(
        small_fs / "cache",
        max_bytes=1 << 30,  # the cap alone would let it fill the disk
        block_size=BLOCK,
        min_free=(reserve, 0.0),
        clock=lambda: now[0],
    )
    try:
        for k in range(60):
            got = await cache.read(source.ident, k * BLOCK, BLOCK, source)
            assert got == source.data[k * BLOCK : (k + 1) * BLOCK]
            assert free(small_fs) >= reserve, f"below the reserve after block {k}"
        st = cache.stats()
        assert st.passthrough > 0 and st.blocks > 0  # it filled up to the reserve, then stopped
        assert (small_fs / "cache").exists()
        stored_before = st.bytes

        # Another writer takes 1 MiB: free space falls below the reserve. The next
        # block evicts the oldest blocks to give the space back, and is not stored.
        with open(small_fs / "other-writer.bin", "wb") as f:
            f.write(b"x" * MiB)
        assert free(small_fs) < reserve
        evicted, passthrough = st.evicted, st.passthrough
        now[0] = 5.0
        await cache.read(source.ident, 60 * BLOCK, BLOCK, source)
        cache._index.drain()  # the evicted blocks' files are unlinked by the index thread
        st = cache.stats()
        assert st.evicted > evicted and st.bytes <= stored_before - MiB
        assert st.passthrough == passthrough + 1 and not cache.is_cached(source.ident, 60)
        assert free(small_fs) >= reserve
        assert not cache.is_cached(source.ident, 0)  # the least recently used went first

        # It stores blocks again now that there is room.
        now[0] = 5.5
        await cache.read(source.ident, 61 * BLOCK, BLOCK, source)
        assert cache.is_cached(source.ident, 61)
        assert free(small_fs) >= reserve
        check_invariants(cache)
        # Every read, stored or passed through, was right.
        assert await cache.read(source.ident, 0, 100 * BLOCK, source) == source.data
        assert free(small_fs) >= reserve
    finally:
        cache.close()


async def test_percent_reserve_and_capacity_warning(small_fs: Path) -> None:
    cache = BlockCache(small_fs / "cache", max_bytes=1 << 30, block_size=BLOCK, min_free=(0, 25.0))
    try:
        warning = cache.capacity_warning()
        assert warning is not None
        where = small_fs / "cache"
        assert warning.startswith(f"cache_size=1G is more than the cache can get on {where}")
        assert "less the cache_min_free reserve of 1M" in warning
        source = Source(80 * BLOCK)
        for k in range(80):
            await cache.read(source.ident, k * BLOCK, BLOCK, source)
            assert free(small_fs) >= MiB  # 25% of 4 MiB
        assert cache.stats().passthrough > 0
    finally:
        cache.close()
    small = BlockCache(small_fs / "cache", max_bytes=MiB, block_size=BLOCK, min_free=(0, 25.0))
    try:
        assert small.capacity_warning() is None  # 1M fits: what it holds plus the room
    finally:
        small.close()
