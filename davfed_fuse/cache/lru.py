"""Which blocks are stored, in which order they were used, and which may be evicted.

Owns: the in-memory mirror of the index's ``blocks`` table (:class:`Block` per
:data:`BlockKey`, oldest use first), the blocks of each file, the size accounting
(``total`` stored, ``reserved`` being written), LRU ticks and the ticks not yet saved
(``dirty``), and pins (a block pinned by a read in progress is never evicted).
Choosing eviction victims is here; dropping them (index, files, memory) is the
façade's (``BlockCache._drop_many``), since every part of the cache takes part.
Must not import: any other module of the cache but ``model``; trio, pyfuse3, httpx.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from davfed_fuse.cache.model import BlockKey


class Block:
    """One stored block: its length, checksum (``model.block_checksum``) and LRU tick."""

    __slots__ = ("checksum", "length", "used")

    def __init__(self, length: int, checksum: int, used: int) -> None:
        self.length = length
        self.checksum = checksum
        self.used = used


class Lru:
    """Stored blocks in LRU order, with pins and size accounting. Not thread-safe:
    used from the event loop only."""

    def __init__(self) -> None:
        self.blocks: OrderedDict[BlockKey, Block] = OrderedDict()  # oldest first
        self.by_file: dict[str, set[int]] = {}
        self.pins: dict[BlockKey, int] = {}
        self.dirty: set[BlockKey] = set()  # ticks changed since the last save
        self.total = 0  # bytes of stored blocks
        self.reserved = 0  # bytes of blocks being written
        self.tick = 0

    def __contains__(self, key: object) -> bool:
        return key in self.blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[BlockKey]:
        return iter(self.blocks)

    def get(self, key: BlockKey) -> Block | None:
        return self.blocks.get(key)

    def files(self) -> int:
        """How many files have at least one stored block."""
        return sum(1 for s in self.by_file.values() if s)

    def add(self, key: BlockKey, block: Block) -> None:
        """Record a stored block as the most recently used (or, at start-up, in the
        order the index's ticks say: the caller adds oldest first)."""
        self.blocks[key] = block
        self.by_file.setdefault(key[0], set()).add(key[1])
        self.total += block.length
        self.tick = max(self.tick, block.used + 1)

    def new_block(self, length: int, checksum: int) -> Block:
        """A block used now (the next tick)."""
        block = Block(length, checksum, self.tick)
        self.tick += 1
        return block

    def remove(self, key: BlockKey) -> Block:
        block = self.blocks.pop(key)
        self.total -= block.length
        self.by_file[key[0]].discard(key[1])
        self.dirty.discard(key)
        return block

    def touch(self, key: BlockKey, block: Block) -> None:
        """A read used this block: it is the most recently used now."""
        self.blocks.move_to_end(key)
        block.used = self.tick
        self.tick += 1
        self.dirty.add(key)

    def take_dirty(self) -> list[tuple[int, str, int]]:
        """``(used, h, idx)`` of every block touched since the last call."""
        rows = [(self.blocks[key].used, *key) for key in self.dirty]
        self.dirty.clear()
        return rows

    def pin(self, key: BlockKey) -> None:
        self.pins[key] = self.pins.get(key, 0) + 1

    def unpin(self, key: BlockKey) -> None:
        left = self.pins[key] - 1
        if left:
            self.pins[key] = left
        else:
            del self.pins[key]

    def victims(self, n: int, max_bytes: int) -> list[BlockKey] | None:
        """Least recently used unpinned blocks whose eviction lets ``n`` more bytes fit
        ``max_bytes`` ([] if they fit already), or None if evicting cannot make room."""
        excess = self.total + self.reserved + n - max_bytes
        if excess <= 0:
            return []
        if n > max_bytes:
            return None
        victims: list[BlockKey] = []
        freed = 0
        for key, block in self.blocks.items():
            if self.pins.get(key):
                continue
            victims.append(key)
            freed += block.length
            if freed >= excess:
                return victims
        return None
