"""fsck for a quiescent block cache: the tests' check after every test.

Owns: :func:`check_invariants`, which holds the index, the memory and the files of a
:class:`~davfed_fuse.cache.blockcache.BlockCache` against each other, and
:func:`check_private` (the modes of ``cache.private``).
Must not import: pyfuse3, httpx. Nothing of the cache imports this module.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from davfed_fuse.cache import blockmath
from davfed_fuse.cache.blockcache import BlockCache
from davfed_fuse.cache.model import BlockKey, block_checksum, url_hash
from davfed_fuse.cache.private import DIR_MODE, FILE_MODE


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
    check_private(c.root)


def check_private(root: Path) -> None:
    """Every directory of the cache is 0700 and every file 0600 (see ``cache.private``)."""
    for dirpath, _, names in os.walk(root):
        mode = stat.S_IMODE(os.stat(dirpath).st_mode)
        assert mode == DIR_MODE, f"directory {dirpath} is {mode:04o}"
        for name in names:
            path = os.path.join(dirpath, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            assert mode == FILE_MODE, f"file {path} is {mode:04o}"
