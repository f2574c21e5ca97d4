"""The index writer thread: no sqlite statement on the event loop, and the order of
renames, commits and unlinks when a file changes while its block is being placed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import trio

from davfed_fuse.cache.invariants import check_invariants
from davfed_fuse.cache.model import url_hash

from .conftest import BS, FakeFetcher, MakeCache, ident_for, make_source


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v1").rglob("*") if p.is_file() and "index" not in p.name)


async def test_the_index_is_written_off_the_event_loop(make_cache: MakeCache) -> None:
    data = make_source(8 * BS)
    ident = ident_for(data)
    cache = make_cache(max_bytes=3 * BS)
    threads: list[tuple[int, str]] = []

    def trace(statement: str) -> None:
        threads.append((threading.get_ident(), statement))

    db: sqlite3.Connection = cache._index._db
    db.set_trace_callback(trace)
    fetch = FakeFetcher(data)
    for k in range(8):  # stores and evictions
        await cache.read(ident, k * BS, 10, fetch)
    cache._bind(ident_for(data, etag="changed"))  # drops every block of the file
    await cache.read(ident_for(data, etag="changed"), 0, 10, fetch)
    cache.close()
    statements = [s for _, s in threads]
    assert any(s.startswith("INSERT INTO blocks") for s in statements)
    assert any(s.startswith("DELETE FROM blocks") for s in statements)
    assert "COMMIT" in statements
    assert threading.get_ident() not in {t for t, _ in threads}


async def test_a_file_rebound_while_its_block_is_placed_keeps_no_trace_of_it(
    make_cache: MakeCache,
) -> None:
    data = make_source(2 * BS)
    ident = ident_for(data)
    other = ident_for(data, etag="other")
    fetch = FakeFetcher(data)
    cache = make_cache()
    key = (url_hash(ident.url), 0)
    got: list[bytes] = []

    async def read() -> None:
        got.append(bytes(await cache.read(ident, 0, 10, fetch)))

    writer_lock = cache._index._lock
    writer_lock.acquire()  # the index writer waits: the block stays "being placed"
    held = True
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(10):
                while key not in cache._filler.placing:  # the .tmp is written in a thread
                    await trio.sleep(0.001)
            cache._bind(other)  # the file changed meanwhile
            writer_lock.release()
            held = False
    finally:
        if held:
            writer_lock.release()
    assert got == [data[:10]]
    assert not cache.is_cached(ident, 0) and not cache.is_cached(other, 0)
    check_invariants(cache)  # no row without its file, no file without its row
    assert block_files(cache.root) == []
    assert cache._index.file_rows()[key[0]] == other
