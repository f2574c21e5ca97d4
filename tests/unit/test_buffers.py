"""The map pool of davfed_fuse.buffers: a map is reused only when nothing refers to it."""

from __future__ import annotations

from davfed_fuse.buffers import MapPool, is_page_aligned

MiB = 1 << 20


def test_a_map_is_reused_only_once_every_view_of_it_is_gone() -> None:
    pool = MapPool(free_bytes=64 * MiB)
    first = memoryview(pool.take(2 * MiB))
    block = first[MiB:].toreadonly()  # a block a reader holds
    del first
    second = memoryview(pool.take(2 * MiB))
    assert pool.reused == 0  # the block still refers to the first map
    second[:] = b"\x01" * (2 * MiB)
    assert bytes(block[:4]) == b"\x00" * 4  # the block's bytes are untouched
    del block
    third = memoryview(pool.take(2 * MiB))
    assert pool.reused == 1 and is_page_aligned(third)
    assert pool.take(4 * MiB) is not None and pool.reused == 1  # another size: a new map


def test_free_maps_over_the_budget_are_let_go() -> None:
    pool = MapPool(free_bytes=4 * MiB)
    for size in (1, 2, 3, 1, 2, 3):
        pool.take(size * MiB)  # each released at once
    free = sum(len(m) for m in pool._maps[:-1])
    assert free <= 4 * MiB


def test_maps_in_use_are_followed_up_to_a_count() -> None:
    pool = MapPool(max_maps=4)
    held = [memoryview(pool.take(MiB)) for _ in range(10)]
    assert len(pool._maps) == 4 and pool.reused == 0
    assert all(is_page_aligned(v) for v in held)
