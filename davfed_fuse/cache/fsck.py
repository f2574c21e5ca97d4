"""The agreement between the index, the memory and the files of a block cache.

Owns: the start-up repair (:func:`sweep` deletes ``*.tmp`` files and files the index
does not know; :func:`reconcile` keeps only the index rows whose file is there with
the right size, for a known identity and a block that exists in it) and
:func:`check_invariants`, the full check of a quiescent cache that the tests run
after every test.
Must not import: pyfuse3, httpx; of the cache, only what it checks.

Completeness is never inferred from file sizes: only the index says a block exists;
sizes only reject rows whose file is obviously wrong (a crash or a power loss between
rename and commit, or between commit and the rename reaching the disk). A file of the
right size with wrong bytes is found by its checksum on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from davfed_fuse.cache import blockmath
from davfed_fuse.cache.lru import Block
from davfed_fuse.cache.model import BlockKey, FileIdentity, block_checksum, url_hash

if TYPE_CHECKING:
    from davfed_fuse.cache.blockcache import BlockCache

log = logging.getLogger(__name__)


def sweep(data: str, rows: dict[BlockKey, Block]) -> dict[BlockKey, int]:
    """Delete ``*.tmp`` and files ``rows`` does not name under ``data``; empty
    directories go too. Returns the sizes of the files that stay."""
    sizes: dict[BlockKey, int] = {}
    removed = 0
    for prefix in os.scandir(data):
        if not prefix.is_dir(follow_symlinks=False):
            continue
        for fdir in os.scandir(prefix.path):
            if not fdir.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(fdir.path):
                key = (fdir.name, int(entry.name)) if entry.name.isdigit() else None
                if key is not None and key in rows and entry.is_file(follow_symlinks=False):
                    sizes[key] = entry.stat(follow_symlinks=False).st_size
                    continue
                removed += 1
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            with contextlib.suppress(OSError):
                os.rmdir(fdir.path)  # only if empty
        with contextlib.suppress(OSError):
            os.rmdir(prefix.path)
    if removed:
        log.info("cache at %s: removed %d leftover files", data, removed)
    return sizes


def reconcile(
    data: str,
    rows: dict[BlockKey, Block],
    files: dict[str, FileIdentity],
    block_size: int,
) -> list[BlockKey]:
    """Sweep ``data``, then return the rows to drop: their file is missing or has the
    wrong size, their identity is unknown, or the block does not exist in it."""
    on_disk = sweep(data, rows)
    stale = []
    for key, blk in rows.items():
        ident = files.get(key[0])
        ok = (
            ident is not None
            and on_disk.get(key) == blk.length
            and 0 <= key[1] < blockmath.block_count(ident.size, block_size)
            and blk.length == blockmath.block_length(key[1], ident.size, block_size)
        )
        if not ok:
            stale.append(key)
    if stale:
        log.info("cache at %s: dropping %d blocks missing or wrong on disk", data, len(stale))
    return stale


def check_invariants(cache: BlockCache) -> None:
    """fsck for a quiescent cache (no reads running): raise AssertionError on any mismatch.

    Waits for the index's queued writes, then checks that the index, the in-memory
    state and the files on disk agree, that every block file has the recorded length
    and checksum, that no ``.tmp`` or unknown file exists, and that the size accounting
    adds up and respects the cap.
    """
    c = cache
    lru, fresh, files = c._lru, c._fresh, c._files
    assert not c._flights, f"flights left: {list(c._flights)}"
    assert not c._filler.placing, f"placements left: {c._filler.placing}"
    assert not lru.pins, f"pins left: {lru.pins}"
    assert lru.reserved == 0, f"reserved bytes left: {lru.reserved}"
    rows = c._index.block_rows()
    mem = {key: (b.length, b.checksum) for key, b in lru.blocks.items()}
    assert rows == mem, f"index and memory differ: {set(rows) ^ set(mem)}"
    idents = c._index.file_rows()
    for h in {h for h, _ in rows}:
        assert idents.get(h) == c._idents.get(h), f"identity of {h} differs in index and memory"
    for (h, k), (length, _) in rows.items():
        ident = idents.get(h)
        assert ident is not None, f"block {h}/{k} of an unknown file"
        assert url_hash(ident.url) == h
        assert length == blockmath.block_length(k, ident.size, c.block_size), f"{h}/{k} length"
    per_file = {h: {k for hh, k in rows if hh == h} for h in {h for h, _ in rows}}
    assert per_file == {h: s for h, s in lru.by_file.items() if s}, "per-file block sets"
    assert lru.total == sum(length for length, _ in rows.values()), "size accounting"
    assert lru.total <= c.max_bytes, f"over the cap: {lru.total} > {c.max_bytes}"
    assert c._verified <= set(rows) and set(files.fds) <= set(rows)
    assert set(fresh.blocks) <= c._verified, "a block kept in memory is not a verified stored one"
    assert fresh.unread <= set(fresh.blocks) and not fresh.taken
    assert fresh.bytes == sum(len(v) for v in fresh.blocks.values()) <= max(fresh.max_bytes, 0)
    for key, view in fresh.blocks.items():
        assert (len(view), block_checksum(view)) == rows[key], f"memory copy of {key} differs"
    on_disk: set[BlockKey] = set()
    for dirpath, _, names in os.walk(files.data):
        for name in names:
            path = os.path.join(dirpath, name)
            if dirpath == files.data:
                assert name.startswith("index.sqlite3"), f"unexpected file {path}"
                continue
            assert name.isdigit(), f"unexpected file {path}"
            key = (os.path.basename(dirpath), int(name))
            assert path == files.path(*key), f"misplaced file {path}"
            assert key in rows, f"file not in the index: {path}"
            with open(path, "rb") as f:
                body = f.read()
            assert (len(body), block_checksum(body)) == rows[key], f"bad contents: {path}"
            on_disk.add(key)
    assert on_disk == set(rows), f"index rows without files: {set(rows) - on_disk}"
