"""Filling the cache: one fetcher call for a run of missing blocks, and storing each block.

Owns: a fetch of adjacent blocks under the cache's ``max_fetches`` limiter, with one
flight per block (``flights``) whose waiters get the bytes as soon as they arrived;
then storing each block crash-safely (write and fsync a ``.tmp`` in a worker thread,
then ``index.place``: rename into place, commit the row) and the blocks being placed;
and the pause after a storage error (disk full: nothing is stored for
``retry_store_after`` seconds, fetched blocks pass through).
Must not import: pyfuse3, httpx; of the cache, only the parts it is given.
Who calls: ``BlockCache`` (its read path and :meth:`~BlockCache.prefetch`), which owns
every part passed in here and decides eviction (``make_room``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import trio

from davfed_fuse.cache import blockmath
from davfed_fuse.cache.blockfiles import BlockFiles, Writer
from davfed_fuse.cache.counters import Counters
from davfed_fuse.cache.flights import Flights
from davfed_fuse.cache.fresh import FreshBlocks
from davfed_fuse.cache.index import Index
from davfed_fuse.cache.lru import Block, Lru
from davfed_fuse.cache.model import BadFetch, BlockKey, Fetcher, FileIdentity, block_checksum
from davfed_fuse.cache.private import make_private_dirs

log = logging.getLogger(__name__)

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Touched blocks whose LRU ticks are saved in one write to the index.
SAVE_EVERY = 1024


class Filler:
    """Fetches runs of blocks and stores them, for one cache. Event loop only."""

    def __init__(
        self,
        root: Path,
        *,
        block_size: int,
        max_fetches: int,
        retry_store_after: float,
        clock: Callable[[], float],
        writer: Writer,
        idents: dict[str, FileIdentity],
        verified: set[BlockKey],
        lru: Lru,
        flights: Flights,
        files: BlockFiles,
        fresh: FreshBlocks,
        index: Index,
        counters: Counters,
        make_room: Callable[[int], bool],
        save: Callable[[], None],
    ) -> None:
        self.root = root
        self.block_size = block_size
        self.limiter = trio.CapacityLimiter(max_fetches)
        self.placing: set[BlockKey] = set()  # written, being renamed into place and indexed
        self.closed = False
        self._retry_store_after = retry_store_after
        self._paused_until: float | None = None
        self._clock = clock
        self._writer = writer
        self._idents = idents
        self._verified = verified
        self._lru = lru
        self._flights = flights
        self._files = files
        self._fresh = fresh
        self._index = index
        self._counters = counters
        self._make_room = make_room
        self._save = save

    def missing(self, ident: FileIdentity, h: str, indices: range) -> list[int]:
        """The blocks of ``indices`` neither stored nor in flight."""
        return [k for k in indices if (h, k) not in self._lru and (ident, k) not in self._flights]

    async def fill_runs(
        self,
        ident: FileIdentity,
        h: str,
        runs: list[tuple[int, int]],
        fetch: Fetcher,
        limiter: trio.CapacityLimiter | None,
    ) -> int:
        """Fetch and store ``runs`` of blocks, in parallel within ``limiter`` (see
        ``BlockCache.prefetch``); return the number of blocks fetched."""
        pending = iter(runs)
        errors: list[Exception] = []
        done = 0

        async def worker() -> None:
            nonlocal done
            while True:
                if limiter is not None:
                    await limiter.acquire()
                try:
                    run = next(pending, None)  # shared iterator: each run goes to one worker
                    if run is None:
                        return
                    # Readers may have fetched some of these blocks meanwhile.
                    for x, y in blockmath.runs(self.missing(ident, h, range(run[0], run[1] + 1))):
                        await self.fetch_run(ident, h, x, y, fetch, prefetch=True)
                        done += y - x + 1
                except Exception as exc:
                    errors.append(exc)
                finally:
                    if limiter is not None:
                        limiter.release()

        tokens = int(limiter.total_tokens) if limiter is not None else len(runs)
        async with trio.open_nursery() as nursery:
            for _ in range(min(len(runs), tokens, int(self.limiter.total_tokens))):
                nursery.start_soon(worker)
        if errors:
            raise errors[0]
        return done

    async def fetch_run(
        self,
        ident: FileIdentity,
        h: str,
        first: int,
        last: int,
        fetch: Fetcher,
        *,
        prefetch: bool = False,
    ) -> list[memoryview]:
        """Fetch blocks ``first..last`` in one call, wake their waiters, store them.

        The caller has checked (without an await since) that none is cached or in flight.
        The error of a failed read fetch is raised in its waiters too; after a failed
        prefetch, waiters fetch the block themselves.
        """
        flights = self._flights.start(ident, first, last)
        try:
            start, end = blockmath.block_range(first, last, ident.size, self.block_size)
            # The limiter is held until the blocks are on disk: fetched bytes waiting for
            # a slow disk must not pile up in memory (at most max_fetches runs at once).
            async with self.limiter:
                data = await fetch(start, end)
                if len(data) != end - start:
                    message = f"{ident.url}: asked for bytes {start}-{end - 1}, got {len(data)}"
                    raise BadFetch(message)
                self._counters.bytes_fetched += len(data)
                # Blocks are shared with waiters: read-only views of the fetched buffer.
                # The writer gets the buffer itself: O_DIRECT needs to see its address.
                raw = memoryview(data)
                view = raw.toreadonly()
                bs = self.block_size
                blocks = [view[i * bs : (i + 1) * bs] for i in range(last - first + 1)]
                for flight, block in zip(flights, blocks, strict=True):
                    flight.data = block
                    flight.event.set()  # waiters are served from memory while we store
                # Fetched bytes are stored even if the fetch's caller is cancelled meanwhile
                # (a reader closed its file): throwing them away costs another download.
                with trio.CancelScope(shield=True):
                    for i, block in enumerate(blocks):
                        await self.store(ident, h, first + i, block, raw[i * bs : (i + 1) * bs])
            return blocks
        except Exception as exc:
            if not prefetch:
                for flight in flights:
                    if not flight.event.is_set():
                        flight.error = exc
            raise
        finally:
            self._flights.finish(ident, first, flights)
            for k in range(first, last + 1):
                self._fresh.fetch_done((h, k))

    async def store(
        self, ident: FileIdentity, h: str, k: int, data: memoryview, raw: memoryview
    ) -> None:
        """Store a fetched block crash-safely, or count it as pass-through.

        ``data`` is the read-only view readers get, ``raw`` the same bytes as fetched
        (for the writer). Never raises for local storage problems (they are logged);
        only cancellation.
        """
        key = (h, k)
        if not self._may_store(ident, key):
            return
        failed = self._index.take_error()  # of an index write queued earlier
        if failed is not None:
            self._storage_failed(failed)
        if self._paused_until is not None and self._clock() < self._paused_until:
            self._counters.passthrough += 1
            return
        n = len(data)
        if not self._make_room(n):
            self._counters.passthrough += 1
            return
        self._lru.reserved += n
        final = self._files.path(h, k)
        tmp = self._files.tmp_path(h, k)
        try:
            direct = self._fresh.direct_writes()
            checksum = await trio.to_thread.run_sync(self._write_tmp, tmp, raw, direct)
            # The await above split the critical section: re-check everything.
            if not self._may_store(ident, key):
                return
            block = Block(n, checksum, self._lru.tick)
            self.placing.add(key)
            try:
                await self._index.place(tmp, final, ident, key, block)  # rename, then commit
            finally:
                self.placing.discard(key)
            if self.closed:
                return  # the index has the block; the next start finds it
            if self._idents.get(h) != ident:  # rebound while it was placed: undo
                self._index.unplace(key, final, self._idents.get(h))
                return
            self._lru.add(key, block)
            self._lru.touch(key, block)
            self._verified.add(key)
            self._fresh.keep(key, data)
            if self._paused_until is not None:
                log.info("cache at %s stores blocks again", self.root)
                self._paused_until = None
        except (OSError, sqlite3.Error) as exc:
            self._counters.passthrough += 1
            self._storage_failed(exc)
        finally:
            self._lru.reserved -= n
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # gone already if it was placed
        if len(self._lru.dirty) >= SAVE_EVERY:
            self._save()

    def _may_store(self, ident: FileIdentity, key: BlockKey) -> bool:
        return not (
            self.closed
            or self._idents.get(key[0]) != ident
            or key in self._lru
            or key in self.placing
        )

    def _write_tmp(self, tmp: str, data: memoryview, direct: bool) -> int:
        """Runs in a worker thread: make the block's directory, write+fsync ``tmp``,
        and return the block's checksum (computed here, off the event loop)."""
        make_private_dirs(Path(tmp).parent)
        self._writer(tmp, data, direct)
        return block_checksum(data)

    def _storage_failed(self, exc: OSError | sqlite3.Error) -> None:
        disk_full = (isinstance(exc, OSError) and exc.errno in _DISK_FULL) or (
            isinstance(exc, sqlite3.Error) and "full" in str(exc)
        )
        if self._paused_until is None:
            log.warning(
                "cache at %s cannot store blocks (%s); serving reads without storing, "
                "retrying in %.0f s",
                self.root,
                exc if disk_full else repr(exc),
                self._retry_store_after,
            )
        else:
            log.debug("cache still cannot store blocks: %s", exc)
        self._paused_until = self._clock() + self._retry_store_after
