"""The agreement between the index, the memory and the files of a block cache.

Owns: the start-up repair (:func:`sweep` deletes ``*.tmp`` files and files the index
does not know; :func:`reconcile` keeps only the index rows whose file is there with
the right size, for a known identity and a block that exists in it). The full check
of a quiescent cache is :func:`davfed_fuse.cache.invariants.check_invariants`.
Must not import: pyfuse3, httpx; the cache's façade (``blockcache`` imports this).

Completeness is never inferred from file sizes: only the index says a block exists;
sizes only reject rows whose file is obviously wrong (a crash or a power loss between
rename and commit, or between commit and the rename reaching the disk). A file of the
right size with wrong bytes is found by its checksum on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os

from davfed_fuse.cache import blockmath
from davfed_fuse.cache.lru import Block
from davfed_fuse.cache.model import BlockKey, FileIdentity

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
