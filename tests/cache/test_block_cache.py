"""BlockCache behaviour against a fake fetcher: correctness, single flight, identity,
eviction, disk full, corruption, cancellation, locking, prefetch, stats."""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from davfed_fuse.cache.blockcache import BadFetch, BlockCache, CacheLocked
from davfed_fuse.cache.blockfiles import write_block_file
from davfed_fuse.cache.fresh import BUFFERED_FOR
from davfed_fuse.cache.invariants import check_invariants
from davfed_fuse.cache.model import url_hash

from .conftest import BS, FakeFetcher, MakeCache, ident_for, make_source


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v1").rglob("*") if p.is_file() and "index" not in p.name)


async def test_random_reads_match_source(make_cache: MakeCache) -> None:
    data = make_source(25 * BS + 123)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache()
    rng = random.Random(7)
    for _ in range(400):
        offset = rng.randrange(0, len(data) + 2 * BS)
        length = rng.choice([0, 1, rng.randrange(1, 3 * BS), rng.randrange(1, 30 * BS)])
        assert await cache.read(ident, offset, length, fetch) == data[offset : offset + length]
    # Every block was fetched exactly once, however the reads overlapped.
    assert sorted(fetch.blocks_fetched()) == list(range(26))
    assert cache.stats().blocks == 26 and cache.stats().bytes == len(data)


async def test_warm_reads_hit_disk_not_network_and_survive_reopen(
    make_cache: MakeCache,
) -> None:
    data = make_source(6 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache()
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert len(fetch.calls) == 1  # adjacent missing blocks of one read: one request
    assert await cache.read(ident, 1500, 2000, fetch) == data[1500:3500]
    st = cache.stats()
    assert (st.hits, st.misses, st.bytes_fetched) == (3, 6, len(data))  # blocks 1, 2, 3
    cache.close()

    cache = make_cache()
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert len(fetch.calls) == 1
    st = cache.stats()
    assert (st.hits, st.misses) == (9, 6)
    assert st.hit_rate == pytest.approx(9 / 15)


async def test_single_flight(make_cache: MakeCache, autojump_clock: trio.abc.Clock) -> None:
    data = make_source(10 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=1.0)
    cache = make_cache()
    results: list[bytes] = []

    async def reader(offset: int) -> None:
        results.append(bytes(await cache.read(ident, offset, 100, fetch)))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(reader, 3 * BS + i * 10)
    assert fetch.calls == [(3 * BS, 4 * BS)]
    assert sorted(results) == sorted(data[3 * BS + i * 10 :][:100] for i in range(20))
    assert cache.stats().misses == 20


async def test_failed_fetch_reaches_every_waiter_then_retries(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(4 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=1.0)
    fetch.fail = ConnectionError("replica down")
    cache = make_cache()
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await cache.read(ident, BS, 10, fetch)
        except ConnectionError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
    assert len(errors) == 5 and len(fetch.calls) == 1
    assert not cache._flights
    fetch.fail = None
    assert await cache.read(ident, BS, 10, fetch) == data[BS : BS + 10]
    assert len(fetch.calls) == 2


async def test_wrong_length_is_rejected_and_not_stored(make_cache: MakeCache) -> None:
    data = make_source(3 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    fetch.short = True
    cache = make_cache()
    with pytest.raises(BadFetch):
        await cache.read(ident, 0, 10, fetch)
    assert cache.stats().blocks == 0 and block_files(cache.root) == []


async def test_cancelled_fetch_leaves_nothing_and_waiters_retry(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(4 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=10.0)
    cache = make_cache()
    got: list[bytes] = []

    async def waiter() -> None:
        got.append(await cache.read(ident, 2 * BS, 50, fetch))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(1.0):  # the owner of the fetch gives up
            nursery.start_soon(waiter)
            await cache.read(ident, 2 * BS, 10, fetch)
    # The waiter woke up when the owner was cancelled and fetched the block itself.
    assert got == [data[2 * BS : 2 * BS + 50]]
    assert fetch.calls == [(2 * BS, 3 * BS)] * 2
    assert not cache._flights


@pytest.mark.parametrize("interrupt", ["cancel", "clean", "rebind"])
async def test_interrupted_store_leaves_no_tmp(make_cache: MakeCache, interrupt: str) -> None:
    """The write of a block runs in a thread and is not cancellable: a cancelled reader's
    block is still stored whole, and so is one in flight while the cache is cleaned (it is
    in use); a block whose URL was rebound to another identity meanwhile is discarded.
    Either way no .tmp file and no flight remain."""
    data = make_source(2 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    entered = trio.Event()
    release = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow_writer(path: str, body: bytes, direct: bool) -> None:
        write_block_file(path, body, direct)
        trio.from_thread.run_sync(entered.set, trio_token=token)
        trio.from_thread.run(release.wait, trio_token=token)

    cache = make_cache(writer=slow_writer)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def read() -> None:
            with cancel:
                got.append(await cache.read(ident, 0, 10, fetch))
                await trio.sleep_forever()

        nursery.start_soon(read)
        await entered.wait()
        assert any(p.name.endswith(".tmp") for p in block_files(cache.root))
        if interrupt == "cancel":
            cancel.cancel()
        elif interrupt == "clean":
            cache.clean()
        else:
            cache._bind(ident_for(data, etag="other"))
        release.set()
        if interrupt != "cancel":
            await trio.testing.wait_all_tasks_blocked()
            cancel.cancel()
    assert got == [data[:10]]
    assert not cache._flights
    files = [p.name for p in block_files(cache.root)]
    assert files == ([] if interrupt == "rebind" else ["0"])


async def test_identity_change_drops_old_blocks(make_cache: MakeCache) -> None:
    old = make_source(5 * BS, seed=1)
    new = make_source(4 * BS + 17, seed=2)
    ident_old = ident_for(old, etag="v1")
    ident_new = ident_for(new, etag="v2")
    cache = make_cache()
    assert await cache.read(ident_old, 0, len(old), FakeFetcher(old)) == old
    fetch_new = FakeFetcher(new)
    assert await cache.read(ident_new, 0, len(new), fetch_new) == new
    assert len(fetch_new.calls) == 1  # nothing of the old version was served
    assert cache.stats().blocks == 5 and cache.stats().bytes == len(new)
    cache.close()

    # After a restart the index still knows which version the blocks belong to.
    cache = make_cache()
    fetch_old = FakeFetcher(old)
    assert await cache.read(ident_old, 0, len(old), fetch_old) == old
    assert len(fetch_old.calls) == 1
    assert not cache.is_cached(ident_new, 0) and cache.is_cached(ident_old, 4)


async def test_eviction_respects_cap_and_lru_order(make_cache: MakeCache) -> None:
    data = make_source(10 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache(max_bytes=3 * BS)
    for k in (0, 1, 2, 0, 3):  # block 0 is used again before 3 arrives: 1 is the LRU
        await cache.read(ident, k * BS, 10, fetch)
    assert [cache.is_cached(ident, k) for k in range(4)] == [True, False, True, True]
    assert cache.stats().evicted == 1
    check_invariants(cache)
    await cache.read(ident, 2 * BS, 10, fetch)
    cache.close()

    # The LRU order survives a restart: 0 is now the oldest.
    cache = make_cache(max_bytes=3 * BS)
    await cache.read(ident, 5 * BS, 10, fetch)
    assert [cache.is_cached(ident, k) for k in (0, 2, 3, 5)] == [False, True, True, True]
    # A smaller cap at the next start evicts down to it.
    cache.close()
    cache = make_cache(max_bytes=BS)
    assert cache.stats().blocks == 1 and cache.is_cached(ident, 5)


async def test_pinned_blocks_are_never_evicted(make_cache: MakeCache) -> None:
    data = make_source(10 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache(max_bytes=2 * BS)
    await cache.read(ident, 0, 10, fetch)
    await cache.read(ident, BS, 10, fetch)
    key = (url_hash(ident.url), 0)
    cache._lru.pin(key)  # as a read of block 0 in a worker thread does
    for k in range(2, 6):
        assert await cache.read(ident, k * BS, 10, fetch) == data[k * BS : k * BS + 10]
        assert cache.is_cached(ident, 0)
    cache._lru.pin(key)
    cache._lru.pin((url_hash(ident.url), 5))
    # Everything is pinned: the next block is served without being stored.
    assert await cache.read(ident, 7 * BS, 10, fetch) == data[7 * BS : 7 * BS + 10]
    assert not cache.is_cached(ident, 7) and cache.stats().passthrough == 1
    cache._lru.unpin(key)
    cache._lru.unpin(key)
    cache._lru.unpin((url_hash(ident.url), 5))


async def test_disk_full_serves_reads_and_recovers(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_source(8 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    now = [0.0]
    full = [True]

    def writer(path: str, body: bytes, direct: bool) -> None:
        if full[0]:
            with open(path, "wb") as f:
                f.write(body[:10])  # a partial write, as on a real full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        write_block_file(path, body, direct)

    cache = make_cache(writer=writer, clock=lambda: now[0], retry_store_after=30.0)
    with caplog.at_level(logging.WARNING, logger="davfed_fuse.cache"):
        for k in range(4):
            assert await cache.read(ident, k * BS, BS, fetch) == data[k * BS : (k + 1) * BS]
    assert len(caplog.records) == 1 and "No space left" in caplog.records[0].getMessage()
    assert cache.stats().blocks == 0 and cache.stats().passthrough == 4
    assert block_files(cache.root) == []
    full[0] = False
    now[0] = 10.0  # still paused: not even tried
    await cache.read(ident, 4 * BS, 10, fetch)
    assert cache.stats().blocks == 0
    now[0] = 31.0
    await cache.read(ident, 5 * BS, 10, fetch)
    assert cache.is_cached(ident, 5)


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and os.path.exists("/proc/filesystems")


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a tmpfs")
async def test_real_full_tmpfs(tmp_path: Path, make_cache: MakeCache) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = await trio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        block = 64 * 1024
        data = make_source(40 * block)
        ident = ident_for(data)
        fetch = FakeFetcher(data)
        cache = make_cache(mnt / "cache", block_size=block)
        for k in range(40):
            assert await cache.read(ident, k * block, block, fetch) == data[k * block :][:block]
        st = cache.stats()
        assert 0 < st.blocks < 40 and st.passthrough > 0
        # Everything stored is intact, and the reads above were all correct.
        check_invariants(cache)
        assert await cache.read(ident, 0, len(data), fetch) == data
        cache.close()
    finally:
        await trio.run_process(["umount", "-l", str(mnt)])


async def test_corrupt_and_truncated_blocks_are_refetched(make_cache: MakeCache) -> None:
    data = make_source(6 * BS)
    ident = ident_for(data)
    cache = make_cache()
    assert await cache.read(ident, 0, len(data), FakeFetcher(data)) == data
    cache.close()
    d = cache.root / "v1" / url_hash(ident.url)[:2] / url_hash(ident.url)
    flipped = bytearray((d / "1").read_bytes())
    flipped[500] ^= 0xFF
    (d / "1").write_bytes(bytes(flipped))  # same size, wrong bytes: found on first use
    with open(d / "4", "r+b") as f:
        f.truncate(300)  # wrong size: found at startup

    cache = make_cache()
    assert cache.stats().blocks == 5
    fetch = FakeFetcher(data)
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert sorted(fetch.blocks_fetched()) == [1, 4]
    # Verified once: reading again costs no fetch and no re-verification.
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert sorted(fetch.blocks_fetched()) == [1, 4]


async def test_startup_sweeps_leftovers(make_cache: MakeCache) -> None:
    data = make_source(4 * BS)
    ident = ident_for(data)
    cache = make_cache()
    await cache.read(ident, 0, len(data), FakeFetcher(data))
    cache.close()
    d = cache.root / "v1" / url_hash(ident.url)[:2] / url_hash(ident.url)
    (d / "2.123-4.tmp").write_bytes(b"half a blo")  # crash during a write
    (d / "9").write_bytes(b"x" * BS)  # crash between rename and index commit
    os.unlink(d / "3")  # index row whose file vanished
    stray = cache.root / "v1" / "zz" / "nothash"
    stray.mkdir(parents=True)
    (stray / "junk").write_bytes(b"?")
    cache = make_cache()
    assert sorted(p.name for p in block_files(cache.root)) == ["0", "1", "2"]
    assert not stray.exists()
    check_invariants(cache)
    fetch = FakeFetcher(data)
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert fetch.blocks_fetched() == [3]


async def test_lock_excludes_a_second_cache(make_cache: MakeCache, cache_root: Path) -> None:
    cache = make_cache()
    with pytest.raises(CacheLocked, match=f"pid {os.getpid()}"):
        BlockCache(cache_root, max_bytes=1 << 20, block_size=BS)
    cache.close()
    make_cache()  # free again


async def test_block_size_change_empties_cache(make_cache: MakeCache) -> None:
    data = make_source(4 * BS)
    ident = ident_for(data)
    cache = make_cache()
    await cache.read(ident, 0, len(data), FakeFetcher(data))
    cache.close()
    cache = make_cache(block_size=2 * BS)
    assert cache.stats().blocks == 0 and block_files(cache.root) == []
    assert await cache.read(ident, 0, len(data), FakeFetcher(data)) == data


async def test_prefetch_runs_in_parallel_within_limits(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(40 * BS + 5)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=1.0)
    cache = make_cache(max_run_blocks=2, max_fetches=8)
    await cache.read(ident, 10 * BS, 1, fetch)  # block 10 is cached already
    done = await cache.prefetch(ident, 0, 100, fetch, limiter=trio.CapacityLimiter(3))
    assert done == 40
    assert fetch.max_running == 3
    # 40 blocks in runs of at most 2 (split at the cached block 10): 20 runs, 3 at a time.
    assert len(fetch.calls) == 1 + 20
    assert all(e - s <= 2 * BS for s, e in fetch.calls)
    assert sorted(fetch.blocks_fetched()) == list(range(41))
    assert await cache.prefetch(ident, 0, 40, fetch) == 0
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert len(fetch.calls) == 21


async def test_prefetch_error_does_not_stop_other_runs(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(6 * BS)
    ident = ident_for(data)
    good = FakeFetcher(data)

    async def flaky(start: int, end: int) -> bytes:
        if start == 2 * BS:
            raise ConnectionError("boom")
        return await good(start, end)

    cache = make_cache(max_run_blocks=1)
    with pytest.raises(ConnectionError):
        await cache.prefetch(ident, 0, 5, flaky)
    assert [cache.is_cached(ident, k) for k in range(6)] == [True, True, False, True, True, True]


async def test_clean_empties_and_resets(make_cache: MakeCache) -> None:
    data = make_source(5 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache()
    await cache.read(ident, 0, len(data), fetch)
    await cache.read(ident, 0, 10, fetch)
    assert cache.stats().hits == 1
    assert cache.clean() == 5
    st = cache.stats()
    assert (st.bytes, st.blocks, st.files, st.hits, st.misses) == (0, 0, 0, 0, 0)
    assert block_files(cache.root) == []
    assert await cache.read(ident, 0, len(data), fetch) == data
    assert len(fetch.calls) == 2


async def test_counters_persist(make_cache: MakeCache) -> None:
    data = make_source(2 * BS)
    ident = ident_for(data)
    cache = make_cache()
    await cache.read(ident, 0, len(data), FakeFetcher(data))
    await cache.read(ident, 0, len(data), FakeFetcher(data))
    before = cache.stats()
    cache.close()
    assert make_cache().stats() == before


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-write", "random"])
async def test_kill_9_at_any_point_leaves_a_consistent_cache(
    make_cache: MakeCache, cache_root: Path, when: str
) -> None:
    from .crash_child import CAP, SOURCE

    ident = ident_for(SOURCE)
    repo = Path(__file__).resolve().parents[2]
    rng = random.Random(5)
    survived = torn = 0
    for _ in range(6):
        with subprocess.Popen(
            [sys.executable, "-m", "tests.cache.crash_child", str(cache_root)],
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            try:
                assert child.stdout is not None
                assert child.stdout.readline() == "ready\n"
                if when == "mid-write":
                    for _ in range(rng.randrange(1, 40)):
                        assert child.stdout.readline() == "mid\n"
                else:
                    time.sleep(rng.uniform(0.0, 0.3))
            finally:
                child.kill()  # SIGKILL
        assert child.returncode == -signal.SIGKILL
        torn += bool(list(cache_root.rglob("*.tmp")))  # killed with a block half written

        cache = make_cache(max_bytes=CAP)
        check_invariants(cache)  # no .tmp, no orphans, index == files, sizes add up
        assert not list(cache_root.rglob("*.tmp"))
        cached = [k for k in range(61) if cache.is_cached(ident, k)]
        assert len(cached) == cache.stats().blocks
        survived += len(cached)
        fetch = FakeFetcher(SOURCE)
        hits = cache.stats().hits
        for k in cached + [k for k in range(61) if k not in cached]:
            got = await cache.read(ident, k * BS, BS, fetch)
            assert got == SOURCE[k * BS : (k + 1) * BS]
        # What survived was served from disk (and was right); the rest was fetched.
        assert cache.stats().hits - hits == len(cached)
        assert sorted(fetch.blocks_fetched()) == [k for k in range(61) if k not in cached]
        check_invariants(cache)
        cache.close()
    assert survived > 0
    if when == "mid-write":
        assert torn > 0


async def test_reader_waiting_on_a_failed_prefetch_fetches_itself(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(3 * BS)
    ident = ident_for(data)
    good = FakeFetcher(data)
    calls: list[tuple[int, int]] = []

    async def first_fails(start: int, end: int) -> bytes:
        calls.append((start, end))
        await trio.sleep(1.0)
        if len(calls) == 1:
            raise ConnectionError("prefetch only")
        return await good(start, end)

    cache = make_cache()
    got: list[bytes] = []

    async def reader() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert cache.is_pending(ident, 1)  # the prefetch is in flight: wait for it
        got.append(await cache.read(ident, BS, 10, first_fails))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        with pytest.raises(ConnectionError):
            await cache.prefetch(ident, 1, 1, first_fails)
    assert got == [data[BS : BS + 10]]
    assert calls == [(BS, 2 * BS)] * 2


async def test_bytearray_fetcher_results_are_served_and_stored(make_cache: MakeCache) -> None:
    data = make_source(3 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)

    async def into_buffer(start: int, end: int) -> bytearray:
        return bytearray(await fetch(start, end))

    cache = make_cache()
    for offset, length in [(0, 10), (BS, 2 * BS), (0, 3 * BS)]:
        got = await cache.read(ident, offset, length, into_buffer)
        assert bytes(got) == data[offset : offset + length]


async def test_blocks_bypass_the_page_cache_until_readers_lag_behind_memory(
    make_cache: MakeCache,
) -> None:
    """Stored blocks stay in memory for their readers and go to disk with O_DIRECT;
    once a block must leave memory unread (readers lag their read-ahead by more
    than ``max_fresh_bytes``), blocks are written through the page cache for a while,
    so that the readers find them there, not on disk."""
    data = make_source(20 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    now = [0.0]
    flags: list[bool] = []

    def writer(path: str, body: bytes, direct: bool) -> None:
        flags.append(direct)
        write_block_file(path, body, direct)

    cache = make_cache(writer=writer, clock=lambda: now[0], max_fresh_bytes=4 * BS)
    # A reader keeping up: each block is read from memory after it arrived.
    for k in range(6):
        await cache.prefetch(ident, k, k, fetch)
        assert bytes(await cache.read(ident, k * BS, BS, fetch)) == data[k * BS : (k + 1) * BS]
    assert flags == [True] * 6
    assert fetch.calls == [(k * BS, (k + 1) * BS) for k in range(6)]  # reads: from memory
    # Read-ahead runs far beyond the memory kept (4 blocks): blocks 6-9 push out the
    # blocks already read; block 10 pushes out block 6, unread.
    for k in range(6, 14):
        await cache.prefetch(ident, k, k, fetch)
    assert flags[6:] == [True] * 5 + [False] * 3  # from block 11 on: the page cache
    now[0] += BUFFERED_FOR
    for k in range(6, 14):  # the reader catches up, from disk and from memory
        assert bytes(await cache.read(ident, k * BS, BS, fetch)) == data[k * BS : (k + 1) * BS]
    assert len(fetch.calls) == 14  # nothing fetched twice
    await cache.prefetch(ident, 14, 14, fetch)
    assert flags[14:] == [True]  # no reader lagging any more
