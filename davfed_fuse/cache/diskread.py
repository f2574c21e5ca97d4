"""Reading stored blocks: from the page cache, from disk, and verifying them once.

Owns: the read of a stored block's bytes when they are not in memory: first from the
page cache without waiting (``RWF_NOWAIT`` on a kept-open descriptor), else from disk
(inline for a small read while no other read runs, else in a worker thread with the
block pinned), and the checksum check of a block before its first use in this process
(in a worker thread, pinned). A block whose file is gone, short or corrupt is dropped.
Must not import: pyfuse3, httpx; of the cache, only ``blockfiles``, ``lru``, ``model``.
Who calls: ``BlockCache``'s read path and ``prefetch`` (for :meth:`StoredBlocks.advise`).
After every await here the block is looked up again: if it was dropped or replaced
meanwhile (``lru.get(key) is not blk``), the result is thrown away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from davfed_fuse.cache.blockfiles import (
    INLINE_READ_MAX,
    BlockFiles,
    advise,
    checksum_of_file,
    pread_path,
)
from davfed_fuse.cache.lru import Block, Lru
from davfed_fuse.cache.model import BlockKey

log = logging.getLogger(__name__)


class StoredBlocks:
    """Reads of the blocks in ``lru``, whose files are in ``files``; ``verified`` holds
    the blocks checked in this process; ``drop`` drops blocks from the whole cache."""

    def __init__(
        self,
        lru: Lru,
        files: BlockFiles,
        verified: set[BlockKey],
        drop: Callable[[list[BlockKey]], None],
    ) -> None:
        self._lru = lru
        self._files = files
        self._verified = verified
        self._drop = drop

    def pread_cached(self, key: BlockKey, lo: int, hi: int) -> bytearray | None:
        """``[lo, hi)`` of a verified block if it is in the page cache; else None.

        Synchronous: no await, so the block cannot be evicted meanwhile.
        """
        fd = self.fd(key)
        return None if fd is None else self._files.pread_cached(fd, lo, hi)

    async def pread_disk(
        self, key: BlockKey, blk: Block, lo: int, hi: int, *, alone: bool
    ) -> bytes | None:
        """Read ``[lo, hi)`` of a block from disk; None if the block changed meanwhile or
        the file is short (then it is dropped).

        A small read while no other read is in progress (``alone``) is done right here, blocking
        the event loop for one disk read (about 0.1 ms here): the hop to a worker
        thread and back cost more than the read itself (random 64 KiB reads from the
        cache: about 2,900/s through a thread, 3,600/s inline). Otherwise the read
        goes to a worker thread, with the block pinned, so that concurrent readers'
        disk reads overlap and do not stall the event loop.
        """
        if alone and hi - lo <= INLINE_READ_MAX:
            fd = self.fd(key)
            data = os.pread(fd, hi - lo, lo) if fd is not None else None
        else:
            self._lru.pin(key)
            try:
                path = self._files.path(*key)
                data = await trio.to_thread.run_sync(pread_path, path, lo, hi - lo)
            finally:
                self._lru.unpin(key)
        if self._lru.get(key) is not blk:
            return None
        if data is None or len(data) != hi - lo:
            log.warning("block file %s is short; dropping it", self._files.path(*key))
            self._drop([key])
            return None
        return data

    async def verify(self, key: BlockKey, blk: Block) -> None:
        """Check a block's checksum once per process lifetime; drop it if it is wrong."""
        self._lru.pin(key)
        try:
            path = self._files.path(*key)
            checksum = await trio.to_thread.run_sync(checksum_of_file, path, blk.length)
        finally:
            self._lru.unpin(key)
        if self._lru.get(key) is not blk:
            return
        if checksum == blk.checksum:
            self._verified.add(key)
            return
        log.warning("block file %s is corrupt or truncated; fetching it again", path)
        self._drop([key])

    def fd(self, key: BlockKey) -> int | None:
        """A kept-open descriptor of a stored block's file; None (and the block dropped)
        if the file is gone."""
        fd = self._files.fd(key)
        if fd is None:
            self._drop([key])
        return fd

    def advise(self, h: str, indices: range) -> None:
        """Ask the kernel to read stored blocks from disk ahead of their readers."""
        for k in indices:
            if (h, k) in self._lru and (fd := self.fd((h, k))) is not None:
                advise(fd)
