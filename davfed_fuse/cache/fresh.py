"""The memory of just-stored blocks ("fresh" blocks), and the page-cache policy it drives.

Owns: the blocks stored last, kept in the memory they arrived in (read-only views of
the fetch buffers) up to ``max_bytes``, so that a sequential reader behind its
read-ahead reads them with no copy and no system call; which of them nobody has read
yet; and when block writes go through the page cache instead of around it
(:meth:`FreshBlocks.direct_writes`).
Must not import: any other module of the cache but ``model``; trio, pyfuse3, httpx.

Block writes bypass the page cache (``O_DIRECT``), so a block just stored is found by
its reader here or on disk. Blocks already read leave this memory first. When a block
must leave it unread, readers lag their read-ahead by more than it holds (several
streams at once): for :data:`BUFFERED_FOR` seconds blocks are then written through the
page cache, so that their readers find them there and not on disk (8 streams:
otherwise every byte was read back from disk).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable

from davfed_fuse.cache.model import BlockKey

log = logging.getLogger(__name__)

#: Seconds of page-cache writes after readers fell behind the memory kept.
BUFFERED_FOR = 30.0


class FreshBlocks:
    """Just-stored blocks by key, within ``max_bytes`` (0 or less: keep none, and write
    every block through the page cache). ``clock`` is the cache's injected clock."""

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.blocks: OrderedDict[BlockKey, memoryview] = OrderedDict()
        self.bytes = 0
        self.unread: set[BlockKey] = set()  # kept and not read by anyone yet
        self.taken: set[BlockKey] = set()  # read from a fetch still storing its blocks
        self._clock = clock
        self._buffered_until = -math.inf  # clock time until which writes keep the page cache

    def get(self, key: BlockKey) -> memoryview | None:
        """The block's memory if kept; a reader about to use it marks it read."""
        view = self.blocks.get(key)
        if view is not None:
            self.blocks.move_to_end(key)
        return view

    def direct_writes(self) -> bool:
        """Whether a block stored now may bypass the page cache."""
        return self.max_bytes > 0 and self._clock() >= self._buffered_until

    def keep(self, key: BlockKey, data: memoryview) -> None:
        """Keep a just-stored block's memory for its readers (see the module docstring)."""
        if self.max_bytes <= 0:
            return
        self.blocks[key] = data
        self.bytes += len(data)
        if key in self.taken:
            self.taken.discard(key)
        else:
            self.unread.add(key)
        while self.bytes > self.max_bytes:
            victim = next((k for k in self.blocks if k not in self.unread), None)
            if victim is None:
                victim = next(iter(self.blocks))
                self.unread.discard(victim)
                if self._clock() >= self._buffered_until:
                    log.debug("readers lag their read-ahead: storing through the page cache")
                self._buffered_until = self._clock() + BUFFERED_FOR
            self.bytes -= len(self.blocks.pop(victim))

    def mark_read(self, key: BlockKey, *, storing: bool = False) -> None:
        """A reader got (part of) this block: it no longer counts as unread read-ahead.

        ``storing``: the block's fetch is still storing it; :meth:`keep` will see this.
        """
        if key in self.blocks:
            self.unread.discard(key)
        elif storing:
            self.taken.add(key)

    def fetch_done(self, key: BlockKey) -> None:
        """The fetch of this block has stored it (or given up): forget that it was taken."""
        self.taken.discard(key)

    def discard(self, key: BlockKey) -> None:
        """The block was dropped from the cache."""
        view = self.blocks.pop(key, None)
        if view is not None:
            self.bytes -= len(view)
            self.unread.discard(key)
