"""A persistent, crash-safe, size-capped on-disk cache of fixed-size blocks of remote files.

Owns: :class:`BlockCache`, the one façade the daemon uses, which composes the parts
below, and the paths that involve several of them: reading (memory, page cache, disk,
a flight, or a fetch), prefetching, dropping blocks, and the identity each URL's
blocks belong to. Its parts, each in its own module:

- ``fill``: a fetcher call for a run of blocks, and storing each block crash-safely;
- ``dirlock``: the lock on the cache directory;
- ``index``: the sqlite index, written by one thread off the event loop;
- ``fsck``: start-up repair of index versus disk, and the invariant checker;
- ``lru``: stored blocks, LRU order, pins, size accounting, eviction victims;
- ``flights``: fetches in flight (single flight per block);
- ``blockfiles``: block files, descriptor pool, ``O_DIRECT``/``RWF_NOWAIT``/fadvise;
- ``diskread``: reading stored blocks (page cache, disk, checksum verification);
- ``fresh``: the memory of just-stored blocks, and when writes keep the page cache;
- ``counters``: hits, misses, bytes fetched, pass-through, evictions (``CacheStats``);
- ``model``: identities, keys, errors, checksums.

Must not import: pyfuse3, httpx, or any davfed module outside ``davfed_fuse.cache`` but
``buffers``. The bytes come from an injected :data:`Fetcher`; time from an injected clock.

Invariants, the awaits that split critical sections, and the crash cases are written
down in ``docs/dev/block-cache.md``; :func:`~davfed_fuse.cache.fsck.check_invariants`
checks them (tests run it after every test).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from davfed_fuse.buffers import Buffer
from davfed_fuse.cache import blockmath, fsck
from davfed_fuse.cache.blockfiles import (
    BlockFiles,
    Writer,
    write_block_file,
)
from davfed_fuse.cache.counters import CacheStats, Counters
from davfed_fuse.cache.dirlock import DirectoryLock
from davfed_fuse.cache.diskread import StoredBlocks
from davfed_fuse.cache.fill import Filler
from davfed_fuse.cache.flights import Flights
from davfed_fuse.cache.fresh import FreshBlocks
from davfed_fuse.cache.index import Index
from davfed_fuse.cache.lru import Lru
from davfed_fuse.cache.model import (
    FORMAT,
    BadFetch,
    BlockKey,
    CacheError,
    CacheLocked,
    Fetcher,
    FileIdentity,
    url_hash,
)
from davfed_fuse.cache.private import DIR_MODE, private_root
from davfed_fuse.cache.space import FreeSpace, StatVfs

__all__ = [
    "BadFetch",
    "BlockCache",
    "CacheError",
    "CacheLocked",
    "CacheStats",
    "Fetcher",
    "FileIdentity",
    "Writer",
    "write_block_file",
]

log = logging.getLogger(__name__)

MiB = 1 << 20
#: Room kept for what storing a block adds besides its bytes (index and WAL pages, a
#: directory), so that the reserve is not dented by them.
METADATA_SLACK = 256 * 1024
#: Seconds between evictions for free space (the unlinks of the last one must land first).
SPACE_SETTLE = 1.0


def _size(n: int) -> str:
    """``n`` bytes, rounded, for messages: ``1.5G``, ``300M``, ``12K``."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.3g}{unit}"
    return f"{n}B"


class BlockCache:
    """Blocks of remote files on local disk, fetched on demand through an injected fetcher.

    One instance per cache directory per host: the constructor takes an exclusive
    ``flock`` on ``root/lock`` (raises :class:`CacheLocked` if taken), opens or creates
    the index, sweeps leftovers of a crash (``*.tmp``, block files the index does not
    know, index rows whose file is gone or has the wrong size) and evicts down to
    ``max_bytes``. All methods must be called from one trio thread.

    ``max_fetches`` bounds concurrent fetcher calls of this cache (reads and prefetches);
    ``max_run_blocks`` bounds how many adjacent missing blocks :meth:`prefetch` asks for in
    one fetcher call; ``max_open_files`` bounds the block file descriptors kept open for
    the fast read path; ``max_fresh_bytes`` bounds the memory of just-stored blocks kept
    for their readers. After a disk-full error nothing is stored for
    ``retry_store_after`` seconds of ``clock`` (reads keep working, as pass-through).

    ``min_free`` is the reserve, ``(bytes, percent of the filesystem)``, the larger of
    which the cache leaves free on its filesystem, whoever else writes there: a block
    that would eat into it evicts least recently used blocks to get back above it (at
    most once per :data:`SPACE_SETTLE` seconds, since files are unlinked in the
    background) and is not stored itself (pass-through).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        block_size: int = 4 * MiB,
        max_fetches: int = 8,
        max_run_blocks: int = 2,
        max_open_files: int = 256,
        max_fresh_bytes: int = 64 * MiB,
        retry_store_after: float = 30.0,
        min_free: tuple[int, float] = (0, 0.0),
        statvfs: StatVfs = os.statvfs,
        clock: Callable[[], float] = time.monotonic,
        writer: Writer = write_block_file,
    ) -> None:
        if block_size <= 0 or max_bytes < 0 or max_fetches <= 0 or max_run_blocks <= 0:
            raise ValueError("block_size, max_fetches, max_run_blocks must be > 0")
        self.root = Path(root)
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.max_run_blocks = max_run_blocks
        data = str(self.root / FORMAT)
        self._idents: dict[str, FileIdentity] = {}  # the identity each URL's blocks belong to
        self._verified: set[BlockKey] = set()  # checksum checked in this process
        self._lru = Lru()
        self._flights = Flights()
        self._files = BlockFiles(data, max_open_files)
        self._fresh = FreshBlocks(max_fresh_bytes, clock)
        self._counters = Counters()
        self._active_reads = 0  # read() calls in progress
        self._closed = False

        private_root(self.root)
        os.makedirs(data, DIR_MODE, exist_ok=True)
        self._space = FreeSpace(
            data, min_bytes=min_free[0], min_percent=min_free[1], statvfs=statvfs
        )
        self._space_evicted_at: float | None = None
        self._clock = clock
        self._lock = DirectoryLock(self.root / "lock")
        try:
            self._index = Index(os.path.join(data, "index.sqlite3"), block_size=block_size)
        except BaseException:
            self._lock.release()
            raise
        try:
            self._load()
        except BaseException:
            self._index.close()
            self._lock.release()
            raise
        self._index.start()
        self._stored = StoredBlocks(self._lru, self._files, self._verified, self._drop_many)
        self._filler = Filler(
            self.root,
            block_size=block_size,
            max_fetches=max_fetches,
            retry_store_after=retry_store_after,
            clock=clock,
            writer=writer,
            idents=self._idents,
            verified=self._verified,
            lru=self._lru,
            flights=self._flights,
            files=self._files,
            fresh=self._fresh,
            index=self._index,
            counters=self._counters,
            make_room=self._make_room,
            save=self._save,
        )

    def _load(self) -> None:
        """Read the index, reconcile it with the files on disk, and evict to the cap."""
        loaded = self._index.load()
        self._counters.load(loaded.meta)
        self._idents.update(loaded.files)
        stale = fsck.reconcile(self._files.data, loaded.blocks, loaded.files, self.block_size)
        if stale:
            self._index.drop_blocks(stale, [self._files.path(*key) for key in stale])
        dropped = set(stale)
        for key, blk in loaded.blocks.items():  # least recently used first
            if key not in dropped:
                self._lru.add(key, blk)
        if self._lru.total > self.max_bytes:
            self._make_room(0)

    # ------------------------------------------------------------------ public API

    async def read(self, ident: FileIdentity, offset: int, length: int, fetch: Fetcher) -> Buffer:
        """Return ``length`` bytes at ``offset`` of the file (fewer only at EOF).

        Cached blocks are read from memory or disk; missing ones are fetched (adjacent
        missing blocks of this read in one fetcher call), stored and returned. Concurrent
        reads of a block wait for the one fetch in flight.

        Raises: whatever ``fetch`` raises (also in the readers waiting for that fetch),
        :class:`BadFetch` for a result of the wrong length, :class:`CacheError` if closed.
        Cancellation: safe at any point; a cancelled fetch leaves no flight and no
        ``.tmp`` file behind, and its waiters retry.
        """
        self._check_open()
        self._active_reads += 1
        try:
            return await self._read(ident, offset, length, fetch)
        finally:
            self._active_reads -= 1

    async def prefetch(
        self,
        ident: FileIdentity,
        first: int,
        last: int,
        fetch: Fetcher,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> int:
        """Fetch and store the missing blocks ``first..last`` (clipped to the file).

        Missing blocks are grouped into runs of at most ``max_run_blocks`` adjacent blocks,
        one fetcher call each, several runs in parallel: at most ``limiter``'s tokens (if
        given; it must not be shared with this cache's own limiter) and at most
        ``max_fetches`` at once. Blocks already cached or in flight are skipped. Returns
        the number of blocks this call fetched.

        Raises: the first error of a run, after the other runs have finished.
        Cancellation: safe, as for :meth:`read`.
        """
        self._check_open()
        h = self._bind(ident)
        last = min(last, blockmath.block_count(ident.size, self.block_size) - 1)
        wanted = range(max(first, 0), last + 1)
        missing = self._filler.missing(ident, h, wanted)
        if len(missing) < len(wanted):
            self._stored.advise(h, wanted)  # read-ahead of blocks on disk: into the page cache
        runs = list(blockmath.runs(missing, self.max_run_blocks))
        return await self._filler.fill_runs(ident, h, runs, fetch, limiter) if runs else 0

    def is_cached(self, ident: FileIdentity, index: int) -> bool:
        """True if block ``index`` of this identity is stored (not necessarily verified)."""
        h = url_hash(ident.url)
        return self._idents.get(h) == ident and (h, index) in self._lru

    def is_pending(self, ident: FileIdentity, index: int) -> bool:
        """True if block ``index`` of this identity is being fetched right now."""
        return (ident, index) in self._flights

    def drop_file(self, ident: FileIdentity) -> int:
        """Drop the stored blocks of ``ident`` not in use now (they failed a whole-file
        check); returns how many. The next reads fetch them again."""
        self._check_open()
        h = url_hash(ident.url)
        victims = [
            (h, k) for k in sorted(self._lru.by_file.get(h, ())) if not self._lru.pins.get((h, k))
        ]
        self._drop_many(victims)
        return len(victims)

    def stats(self) -> CacheStats:
        """Current size and counters (counters persist across restarts)."""
        lru = self._lru
        return self._counters.stats(
            bytes=lru.total, max_bytes=self.max_bytes, blocks=len(lru), files=lru.files()
        )

    def clean(self) -> int:
        """Drop every block not in use right now, forget idle files, reset the counters.

        Returns the number of blocks dropped. Blocks pinned by a read in progress stay.
        Waits (blocking) until the index and the files on disk say so too.
        """
        self._check_open()
        victims = [key for key in self._lru if not self._lru.pins.get(key)]
        self._drop_many(victims)
        busy = {h for h, _ in self._lru.pins} | {url_hash(i.url) for i, _ in self._flights}
        idle = [h for h in self._idents if h not in busy and not self._lru.by_file.get(h)]
        for h in idle:
            del self._idents[h]
            self._lru.by_file.pop(h, None)
        self._index.drop_files(idle)
        self._counters.reset()
        self._save()
        self._index.drain()
        for h in idle:
            with contextlib.suppress(OSError):
                os.rmdir(self._files.file_dir(h))
        return len(victims)

    def close(self) -> None:
        """Persist LRU order and counters, close descriptors and the index, release the lock.

        Idempotent. Waits (blocking) for the index's queued writes. Fetches still in
        flight finish without storing.
        """
        if self._closed:
            return
        self._closed = True
        self._filler.closed = True
        try:
            self._save()
            self._index.drain()
            failed = self._index.take_error()
            if failed is not None:
                log.warning("cache at %s: the index was not fully written: %s", self.root, failed)
        finally:
            self._files.close()
            self._index.close()
            self._lock.release()

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read path

    async def _read(self, ident: FileIdentity, offset: int, length: int, fetch: Fetcher) -> Buffer:
        sp = blockmath.span(offset, length, ident.size, self.block_size)
        if sp is None:
            return b""
        fetched: dict[int, memoryview] = {}
        parts: list[Buffer] = []
        for k in range(sp.first, sp.last + 1):
            h = self._bind(ident)  # again after every await: the URL may have been rebound
            key = (h, k)
            lo, hi = sp.slice_in(k, self.block_size)
            got = fetched.pop(k, None)
            if got is not None:
                self._counters.misses += 1
                parts.append(got[lo:hi])
                continue
            blk = self._lru.get(key)
            verified = blk is not None and key in self._verified
            data: Buffer | None = None
            if blk is not None and verified:
                fresh = self._fresh.get(key)
                if fresh is not None:
                    data = fresh[lo:hi]
                    self._fresh.mark_read(key)
                else:
                    data = self._stored.pread_cached(key, lo, hi)
                if data is not None:
                    self._lru.touch(key, blk)
                    self._counters.hits += 1
            if data is None:  # verified: the page cache was tried just now
                data = await self._read_slow(ident, k, lo, hi, sp.last, fetch, fetched, verified)
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_slow(
        self,
        ident: FileIdentity,
        k: int,
        lo: int,
        hi: int,
        last: int,
        fetch: Fetcher,
        fetched: dict[int, memoryview],
        page_cache_tried: bool = False,
    ) -> Buffer:
        """Serve block ``k``'s ``[lo, hi)`` when the fast path could not: verify, read from
        disk, wait for a flight, or fetch (extending the fetch over following missing
        blocks up to ``last``, whose data is left in ``fetched``). ``page_cache_tried``:
        the caller found the block not in the page cache an instant ago."""
        while True:
            self._check_open()
            h = self._bind(ident)  # an await may have rebound the URL to another identity
            key = (h, k)
            blk = self._lru.get(key)
            if blk is not None:
                if key not in self._verified:
                    await self._stored.verify(key, blk)
                    continue
                data: Buffer | None = None
                if not page_cache_tried:
                    data = self._stored.pread_cached(key, lo, hi)
                page_cache_tried = False
                if data is None:
                    alone = self._active_reads <= 1
                    data = await self._stored.pread_disk(key, blk, lo, hi, alone=alone)
                if data is not None:
                    self._lru.touch(key, blk)
                    self._counters.hits += 1
                    return data
                continue
            flight = self._flights.get((ident, k))
            if flight is not None:
                await flight.event.wait()
                if flight.data is not None:
                    self._counters.misses += 1
                    self._fresh.mark_read(key, storing=self._flights.get((ident, k)) is flight)
                    return flight.data[lo:hi]
                if flight.error is not None:
                    raise flight.error
                continue  # that fetch was cancelled: try again
            j = k
            while j < last and (h, j + 1) not in self._lru and (ident, j + 1) not in self._flights:
                j += 1
            blocks = await self._filler.fetch_run(ident, h, k, j, fetch)
            for i in range(k + 1, j + 1):
                fetched[i] = blocks[i - k]
            for i in range(k, j + 1):
                self._fresh.mark_read((h, i))  # stored (or not) by now
            self._counters.misses += 1
            return blocks[0][lo:hi]

    # ------------------------------------------------------------------ fetch and store

    def _make_room(self, n: int) -> bool:
        """Evict least recently used unpinned blocks until ``n`` more bytes fit the cap
        and leave the filesystem's reserve free; False: do not store them."""
        victims = self._lru.victims(n, self.max_bytes)
        if victims is None:
            return False
        self._drop_many(victims)
        self._counters.evicted += len(victims)
        if n == 0:
            return True
        # Bytes being written now may not be on disk yet: count them as still to come,
        # and the index rows and directory a block brings with it.
        below = n + self._lru.reserved + METADATA_SLACK - self._space.room()
        if below <= 0:
            return True
        now = self._clock()
        if self._space_evicted_at is None or now - self._space_evicted_at >= SPACE_SETTLE:
            # What earlier evictions freed may not be unlinked yet: evict once, then wait.
            self._space_evicted_at = now
            victims = self._lru.victims(0, max(0, self._lru.total + self._lru.reserved - below))
            if victims:
                log.info(
                    "free space on %s is below the cache_min_free reserve; evicting %d blocks",
                    self.root,
                    len(victims),
                )
                self._drop_many(victims)
                self._counters.evicted += len(victims)
        return False

    def capacity_warning(self) -> str | None:
        """Why ``max_bytes`` cannot be reached on this filesystem, or None if it can."""
        short = self._space.shortfall(self.max_bytes, self._lru.total)
        if not short:
            return None
        return (
            f"cache_size={_size(self.max_bytes)} is more than the cache can get on "
            f"{self.root}: {_size(self._space.free())} free plus "
            f"{_size(self._lru.total)} cached, less the cache_min_free reserve of "
            f"{_size(self._space.reserve)}; the cache stops at about "
            f"{_size(max(0, self.max_bytes - short))}"
        )

    # ------------------------------------------------------------------ bookkeeping

    def _bind(self, ident: FileIdentity) -> str:
        """Make ``ident`` the identity the URL's blocks belong to; drop blocks of another."""
        h = url_hash(ident.url)
        cur = self._idents.get(h)
        if cur is ident or cur == ident:
            return h
        dropped: list[str] = []
        if cur is not None:
            log.info("%s changed (%s -> %s); dropping its cached blocks", ident.url, cur, ident)
            for k in sorted(self._lru.by_file.get(h, ())):
                self._forget((h, k))
                dropped.append(self._files.path(h, k))
        self._idents[h] = ident
        self._index.bind_file(h, ident, replaced=cur is not None, dropped=dropped)
        return h

    def _drop_many(self, keys: list[BlockKey]) -> None:
        """Forget blocks now; the index deletes their rows, then their files (queued).

        A crash between the two leaves orphan files, which the next start sweeps.
        """
        if not keys:
            return
        for key in keys:
            self._forget(key)
        self._index.drop_blocks(keys, [self._files.path(*key) for key in keys])

    def _forget(self, key: BlockKey) -> None:
        """Remove a stored block from memory (not from the index or the disk)."""
        self._lru.remove(key)
        self._verified.discard(key)
        self._fresh.discard(key)
        self._files.close_fd(key)

    def _save(self) -> None:
        """Queue the LRU ticks of touched blocks and the counters for the index."""
        self._index.save(self._lru.take_dirty(), self._counters.persistent())

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"block cache at {self.root} is closed")
