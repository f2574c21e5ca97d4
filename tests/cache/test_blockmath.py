"""Block arithmetic, checked against a brute-force model with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from davfed_fuse.cache import blockmath as bm

sizes = st.integers(min_value=0, max_value=10_000)
block_sizes = st.integers(min_value=1, max_value=700)


@given(sizes, block_sizes)
def test_blocks_tile_the_file(size: int, bs: int) -> None:
    n = bm.block_count(size, bs)
    covered = 0
    for i in range(n):
        start, end = bm.block_range(i, i, size, bs)
        assert start == covered
        assert 0 < end - start <= bs
        assert bm.block_length(i, size, bs) == end - start
        covered = end
    assert covered == size
    if n:
        assert bm.block_range(0, n - 1, size, bs) == (0, size)
    with pytest.raises(ValueError):
        bm.block_range(n, n, size, bs)


@given(sizes, block_sizes, st.integers(0, 12_000), st.integers(0, 12_000))
def test_span_matches_bytewise_model(size: int, bs: int, offset: int, length: int) -> None:
    sp = bm.span(offset, length, size, bs)
    wanted = [b for b in range(offset, offset + length) if b < size]
    start, end = bm.clip(offset, length, size)
    assert list(range(start, end)) == wanted
    if not wanted:
        assert sp is None
        return
    assert sp is not None
    assert sp.first == wanted[0] // bs and sp.last == wanted[-1] // bs
    # Reassembling the per-block slices gives exactly the wanted bytes.
    got: list[int] = []
    for i in range(sp.first, sp.last + 1):
        lo, hi = sp.slice_in(i, bs)
        blo, bhi = bm.block_range(i, i, size, bs)
        assert 0 <= lo < hi <= bhi - blo
        got.extend(range(blo + lo, blo + hi))
    assert got == wanted


@given(st.integers(1, 10_000), block_sizes, st.data())
def test_range_header_is_inclusive(size: int, bs: int, data: st.DataObject) -> None:
    n = bm.block_count(size, bs)
    first = data.draw(st.integers(0, n - 1))
    last = data.draw(st.integers(first, n - 1))
    header = bm.range_header(first, last, size, bs)
    lo, hi = header.removeprefix("bytes=").split("-")
    assert (int(lo), int(hi) + 1) == bm.block_range(first, last, size, bs)


@given(st.sets(st.integers(0, 200)), st.none() | st.integers(1, 9))
def test_runs_partition_indices(indices: set[int], max_run: int | None) -> None:
    ordered = sorted(indices)
    result = list(bm.runs(ordered, max_run))
    flat = [i for a, b in result for i in range(a, b + 1)]
    assert flat == ordered
    for a, b in result:
        assert a <= b
        if max_run is not None:
            assert b - a + 1 <= max_run
    # Adjacent runs are split only where the first one reached the length limit.
    for (a1, b1), (a2, _) in itertools.pairwise(result):
        if a2 == b1 + 1:
            assert max_run is not None and b1 - a1 + 1 == max_run


def test_runs_examples() -> None:
    assert list(bm.runs([1, 2, 3, 7])) == [(1, 3), (7, 7)]
    assert list(bm.runs([0, 1, 2, 3, 4], 2)) == [(0, 1), (2, 3), (4, 4)]
    assert list(bm.runs([])) == []
    with pytest.raises(ValueError):
        list(bm.runs([3, 2]))


def test_span_examples() -> None:
    assert bm.span(0, 10, 0, 4) is None
    assert bm.span(10, 1, 10, 4) is None
    assert bm.span(3, 6, 10, 4) == bm.BlockSpan(first=0, last=2, first_offset=3, last_end=1)
    assert bm.span(8, 100, 10, 4) == bm.BlockSpan(first=2, last=2, first_offset=0, last_end=2)
