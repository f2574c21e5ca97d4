"""The read-ahead policy (a pure state machine) and FileReader over a fake fetcher."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from davfed_fuse.daemon.filereader import FileReader, ReadaheadPolicy, ScatterDetector

from .conftest import BS, FakeFetcher, MakeCache, ident_for, make_source

KiB = 1024
MB4 = 4 << 20


def sequential(policy: ReadaheadPolicy, size: int, chunk: int) -> list[range]:
    return [r for off in range(0, size, chunk) if (r := policy.on_read(off, chunk))]


def test_window_starts_small_and_doubles_to_the_max() -> None:
    size = 200 * MB4
    policy = ReadaheadPolicy(size, MB4, initial_blocks=1, max_bytes=64 << 20)
    issued = sequential(policy, size, 128 * KiB)
    assert issued[0] == range(1, 2)
    # The window doubles with each block the reader enters: 1, 2, 4, 8, 16 blocks;
    # each top-up adds what the reader consumed and the window's growth.
    assert [len(r) for r in issued[:5]] == [1, 2, 3, 5, 9]
    assert policy.window == 16
    assert all(8 <= len(r) <= 16 for r in issued[5:-1])
    # Every block after the first is handed out exactly once, in order.
    flat = [i for r in issued for i in r]
    assert flat == list(range(1, 200))
    # Never more than the maximum window ahead of the reader.
    assert max(len(r) for r in issued) <= 16


def test_random_reads_reset_and_prefetch_nothing() -> None:
    size = 100 * MB4
    policy = ReadaheadPolicy(size, MB4)
    sequential(policy, 40 * MB4, 1 << 20)
    assert policy.window > 4
    rng = random.Random(3)
    asked = [policy.on_read(rng.randrange(MB4, size), 64 * KiB) for _ in range(200)]
    assert sum(len(r) for r in asked) <= 2  # a rare chance neighbour at most
    # A far jump resets the window; an isolated read prefetches nothing.
    assert policy.on_read(90 * MB4, 64 * KiB) == range(0)
    assert policy.window == 1
    assert policy.on_read(10 * MB4, 64 * KiB) == range(0)
    # The next read continuing that one starts a new, small stream.
    assert policy.on_read(10 * MB4 + 64 * KiB, 64 * KiB) == range(11, 12)


@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**6)), max_size=60))
def test_random_access_never_asks_for_a_large_window(reads: list[tuple[int, int]]) -> None:
    policy = ReadaheadPolicy(10**7, 100_000, max_bytes=5_000_000)
    for offset, length in reads:
        r = policy.on_read(offset, length)
        assert len(r) <= policy.max_blocks
        assert all(0 <= i < policy.blocks for i in r)


def test_small_out_of_order_reads_stay_sequential() -> None:
    policy = ReadaheadPolicy(100 * MB4, MB4)
    policy.on_read(0, 128 * KiB)
    policy.on_read(256 * KiB, 128 * KiB)  # arrived before the one at 128 KiB
    policy.on_read(128 * KiB, 128 * KiB)
    assert policy.on_read(MB4, 128 * KiB) == range(2, 4)  # still one stream: window grew


def test_empty_and_eof_reads_change_nothing() -> None:
    policy = ReadaheadPolicy(10 * BS, BS)
    assert policy.on_read(0, 0) == range(0)
    assert policy.on_read(10 * BS, 100) == range(0)
    assert policy.on_read(0, 10) == range(1, 2)
    # Near EOF the window is clipped to the file.
    policy = ReadaheadPolicy(3 * BS, BS, initial_blocks=8)
    assert policy.on_read(0, 10) == range(1, 3)


async def test_file_reader_prefetches_sequential_reads(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(64 * BS + 77)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=0.05)  # a 50 ms round trip per request
    # The cache stores blocks in worker threads: let virtual time jump only when the
    # loop has been idle for a moment of real time, not while a thread is writing.
    autojump_clock.autojump_threshold = 0.02  # type: ignore[attr-defined]
    cache = make_cache(max_run_blocks=1)
    limiter = trio.CapacityLimiter(8)
    out = bytearray()
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, fetch, nursery, limiter)
        reader.policy.max_blocks = 16
        start = trio.current_time()
        while chunk := await reader.read(len(out), 300):
            out += chunk
        elapsed = trio.current_time() - start
    assert bytes(out) == data
    # The first read is answered by a ranged GET of just its bytes (no waiting for a
    # whole block); then one fetch per block, most from read-ahead (this reader is
    # infinitely fast, so it sometimes catches up with a full window and fetches a
    # block itself).
    assert fetch.calls[0] == (0, 300)
    fetch.calls.pop(0)
    assert sorted(fetch.blocks_fetched()) == list(range(65))
    assert reader.prefetched_blocks >= 50 and reader.prefetch_failures == 0
    # Sequential one-block fetches would take 65 x 50 ms; read-ahead overlaps them.
    assert elapsed < 0.5 * 65 * 0.05
    # Memory stays bounded: never more than the window (+ the read's own block) in flight.
    assert fetch.max_running <= 16 + 1


async def test_failed_prefetch_does_not_fail_the_read(make_cache: MakeCache) -> None:
    data = make_source(8 * BS)
    ident = ident_for(data)
    good = FakeFetcher(data)
    release = trio.Event()
    failed: list[int] = []

    async def flaky(start: int, end: int) -> bytes:
        # The first attempt at block 1 (a prefetch) fails once the test says so.
        if start == BS and not failed:
            failed.append(start)
            await release.wait()
            raise ConnectionError("replica went away")
        return await good(start, end)

    cache = make_cache()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, flaky, nursery, trio.CapacityLimiter(4))
        assert await reader.read(0, 10) == data[:10]  # starts the prefetch of block 1
        await trio.testing.wait_all_tasks_blocked()
        assert failed == [BS]

        async def read_block_1() -> None:
            got.append(await reader.read(BS, BS))

        nursery.start_soon(read_block_1)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # waiting for the prefetch in flight
        release.set()
    # The read fetched block 1 itself after the prefetch failed.
    assert got == [data[BS : 2 * BS]]
    assert reader.prefetch_failures == 1 and cache.is_cached(ident, 1)
    assert good.calls.count((BS, 2 * BS)) == 1


async def test_close_cancels_read_ahead_but_not_fills(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(8 * BS)
    ident = ident_for(data)
    quick = FakeFetcher(data)

    async def fetch(start: int, end: int) -> bytes:
        if quick.calls:  # the first (direct) read is quick, block fetches are slow
            await trio.sleep(100)
        return await quick(start, end)

    cache = make_cache()
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, fetch, nursery, trio.CapacityLimiter(4))
        assert bytes(await reader.read(0, 10)) == data[:10]
        await trio.testing.wait_all_tasks_blocked()
        assert reader._inflight == 2  # block 0 (for the cache) and block 1 (read-ahead)
        reader.close()
        await trio.testing.wait_all_tasks_blocked()
        # The read-ahead is gone; the fill of block 0, which the read used, goes on.
        assert reader._inflight == 1
        assert cache.is_pending(ident, 0) and not cache.is_pending(ident, 1)
        assert trio.current_time() < 10
    assert reader._inflight == 0 and not cache._flights
    assert cache.is_cached(ident, 0) and not cache.is_cached(ident, 1)


@pytest.mark.parametrize("max_bytes", [BS, 3 * BS])
def test_window_never_exceeds_max(max_bytes: int) -> None:
    policy = ReadaheadPolicy(1000 * BS, BS, initial_blocks=4, max_bytes=max_bytes)
    issued = sequential(policy, 1000 * BS, BS // 3)
    assert policy.initial_blocks <= policy.max_blocks == max_bytes // BS
    assert max(len(r) for r in issued) <= policy.max_blocks


async def test_a_first_or_random_read_does_not_wait_for_whole_blocks(
    make_cache: MakeCache,
) -> None:
    data = make_source(16 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=0.01)  # real time: block stores run in threads
    cache = make_cache()
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, fetch, nursery, trio.CapacityLimiter(4))
        assert bytes(await reader.read(0, 1000)) == data[:1000]
        assert fetch.calls[0] == (0, 1000)
        # A random read elsewhere: its own bytes first, its block for the cache after.
        assert bytes(await reader.read(9 * BS + 5, 100)) == data[9 * BS + 5 : 9 * BS + 105]
        assert (9 * BS + 5, 9 * BS + 105) in fetch.calls
        with trio.fail_after(10):  # the background stores run in worker threads
            while not (cache.is_cached(ident, 9) and cache.is_cached(ident, 0)):
                await trio.sleep(0.01)
        calls = len(fetch.calls)
        # Read again: from the cache, no request.
        assert bytes(await reader.read(9 * BS + 5, 100)) == data[9 * BS + 5 : 9 * BS + 105]
        assert len(fetch.calls) == calls
        reader.close()


async def test_blocks_fetched_before_close_are_still_stored(
    make_cache: MakeCache, autojump_clock: trio.abc.Clock
) -> None:
    data = make_source(4 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data)
    cache = make_cache()
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, fetch, nursery, trio.CapacityLimiter(4))
        await reader.read(0, BS)
        # Let the background fetches finish; their stores now wait on worker threads.
        await trio.testing.wait_all_tasks_blocked()
        # Block 0 is stored from the first read's bytes (not fetched again), block 1 fetched.
        assert sorted(fetch.blocks_fetched()[1:]) == [1] and not cache.is_cached(ident, 0)
        reader.close()  # while the blocks are being written
    assert cache.is_cached(ident, 0) and cache.is_cached(ident, 1)


def test_readahead_zero_turns_it_off() -> None:
    policy = ReadaheadPolicy(100 * BS, BS, max_bytes=0)
    assert sequential(policy, 100 * BS, BS) == []
    assert sequential(ReadaheadPolicy(100 * BS, BS, max_bytes=BS), 100 * BS, BS) != []


async def test_a_fill_after_a_direct_read_fetches_only_the_rest_of_its_block(
    make_cache: MakeCache,
) -> None:
    data = make_source(16 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=0.01)
    cache = make_cache()
    async with trio.open_nursery() as nursery:
        reader = FileReader(cache, ident, fetch, nursery, trio.CapacityLimiter(4))
        assert bytes(await reader.read(5 * BS + 100, 500)) == data[5 * BS + 100 : 5 * BS + 600]
        with trio.fail_after(10):
            while not cache.is_cached(ident, 5):
                await trio.sleep(0.01)
        # The read's bytes, then the parts of block 5 before and after them: no byte twice.
        assert sorted(fetch.calls) == [
            (5 * BS, 5 * BS + 100),
            (5 * BS + 100, 5 * BS + 600),
            (5 * BS + 600, 6 * BS),
        ]
        assert bytes(await reader.read(5 * BS, BS)) == data[5 * BS : 6 * BS]
        reader.close()


def test_scatter_detector_fires_once_for_a_file_read_all_over() -> None:
    det = ScatterDetector(100 * BS, BS)
    reads = [(k * BS + 7, BS // 4) for k in (50, 3, 77, 20, 9)]  # dense reads all over
    fired = [det.on_read(off, n, jumped=True) for off, n in reads]
    assert fired == [False, False, False, True, False]


def test_scatter_detector_ignores_small_random_and_sequential_reads() -> None:
    small = ScatterDetector(100 * BS, BS)
    assert not any(small.on_read(k * BS, BS // 64, jumped=True) for k in range(100))
    stream = ScatterDetector(100 * BS, BS)
    assert not any(stream.on_read(k * BS, BS, jumped=k == 0) for k in range(100))
    too_big = ScatterDetector(100 * BS, BS, max_file=10 * BS)
    assert not any(too_big.on_read(k * BS, BS, jumped=True) for k in range(100))


async def test_a_file_read_all_over_is_fetched_whole_across_opens(
    make_cache: MakeCache,
) -> None:
    data = make_source(12 * BS)
    ident = ident_for(data)
    fetch = FakeFetcher(data, delay=0.001)
    cache = make_cache(max_bytes=100 * BS)
    async with trio.open_nursery() as nursery:
        for k in (7, 2, 10, 5):  # one open per range, as uproot through fsspec reads
            reader = FileReader(cache, ident, fetch, nursery, trio.CapacityLimiter(4))
            got = await reader.read(k * BS + 3, BS // 2)
            assert bytes(got) == data[k * BS + 3 : k * BS + 3 + BS // 2]
            reader.close()
        with trio.fail_after(10):
            while not all(cache.is_cached(ident, k) for k in range(12)):
                await trio.sleep(0.01)
    fetched = sum(end - start for start, end in fetch.calls)
    # Every byte once, but for at most one read's own bytes: a read answered directly
    # while the whole-file fetch of its block is being started fetches them too
    # (seen once in a full run under load: 12,500 of 12,000).
    assert len(data) <= fetched <= len(data) + BS // 2
