"""A persistent, crash-safe, size-capped on-disk cache of fixed-size blocks of remote files.

Owns: the cache directory (``root``): its lock file, its index (``v1/index.sqlite3``), the
block files (``v1/<h[:2]>/<h>/<index>``, ``h = sha256(url)``), the in-memory LRU, pin
counts, the single-flight table of fetches in progress, and the hit/miss counters.
Must not import: pyfuse3, httpx, or any davfed module but ``blockmath``. The bytes come
from an injected :data:`Fetcher`; time comes from an injected clock.

Invariants, the awaits that split critical sections, and the crash cases are written
down in ``docs/dev/block-cache.md``; :func:`check_invariants` checks them (tests run it
after every test).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio
import xxhash

from davfed_fuse.buffers import Buffer
from davfed_fuse.cache import blockmath

log = logging.getLogger(__name__)

MiB = 1 << 20

#: Maps ``(start, end_exclusive)`` of the remote file to exactly those bytes; raises on error.
#: The result is used in place (never copied), shared read-only with waiters.
Fetcher = Callable[[int, int], Awaitable[Buffer]]
#: Writes ``data`` to a new file at ``path`` and fsyncs it; runs in a worker thread. The
#: third argument says whether the write may bypass the page cache (``O_DIRECT``).
Writer = Callable[[str, Buffer, bool], None]

FORMAT = "v1"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_DIRECT = getattr(os, "O_DIRECT", 0)
#: Seconds of page-cache writes after readers fell behind the memory kept (_keep_fresh).
BUFFERED_FOR = 30.0
#: Reads of a block file up to this size may block the event loop (see _pread_disk).
INLINE_READ_MAX = 256 * 1024
_PAGE = 4096

_UPSERT_FILE = "INSERT OR REPLACE INTO files (h, url, size, etag, mtime_ns) VALUES (?, ?, ?, ?, ?)"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    h TEXT PRIMARY KEY, url TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    h TEXT NOT NULL, idx INTEGER NOT NULL, length INTEGER NOT NULL,
    crc INTEGER NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (h, idx));
"""


class CacheError(Exception):
    """Base class of the block cache's own errors."""


class CacheLocked(CacheError):
    """Another process (or another :class:`BlockCache`) holds the cache directory."""


class BadFetch(CacheError):
    """The fetcher returned a different number of bytes than asked for; nothing was stored."""


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A remote file as the federation described it; cached blocks belong to one identity."""

    url: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for ``davfed cache stats``; hits and misses count blocks touched by reads."""

    bytes: int
    max_bytes: int
    blocks: int
    files: int
    hits: int
    misses: int
    bytes_fetched: int
    passthrough: int  # fetched blocks that could not be stored (disk full, cap, errors)
    evicted: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


BlockKey = tuple[str, int]  # (sha256(url) hex, block index)


class _Block:
    """One stored block: its length, checksum (:func:`block_checksum`) and LRU tick."""

    __slots__ = ("crc", "length", "used")

    def __init__(self, length: int, crc: int, used: int) -> None:
        self.length = length
        self.crc = crc
        self.used = used


class _Flight:
    """A fetch in progress. ``event`` is set once ``data`` or ``error`` is known, or the
    fetch was cancelled or was a failed prefetch (both None: waiters fetch themselves)."""

    __slots__ = ("data", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.data: memoryview | None = None
        self.error: Exception | None = None


#: The block checksum stored in the index (meta key ``checksum``): xxh3-64, cut to 63 bits
#: for sqlite's signed INTEGER. 1 was zlib.crc32, ten times slower (2 GB/s here).
CHECKSUM_ID = 2


def block_checksum(data: Buffer) -> int:
    """The checksum of a block's bytes, as the index stores it."""
    return xxhash.xxh3_64_intdigest(data) & 0x7FFF_FFFF_FFFF_FFFF


def write_block_file(path: str, data: Buffer, direct: bool = False) -> None:
    """Default :data:`Writer`: create ``path`` exclusively, write all of ``data``, fsync.

    With ``direct``, whole pages of page-aligned memory (the fetch buffers are memory
    maps) are written with ``O_DIRECT``: straight from that memory to the disk, with
    no copy into the page cache. Where the file system or the buffer does not allow
    it, the write is buffered.
    """
    view = memoryview(data)
    direct = direct and len(view) % _PAGE == 0 and bool(_DIRECT)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (_DIRECT if direct else 0), 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not direct:
            raise
        fd = os.open(path, flags, 0o644)  # a file system without O_DIRECT (older tmpfs)
        direct = False
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except OSError as exc:
                if exc.errno != errno.EINVAL or not direct:
                    raise
                # Unaligned memory, or a file system without O_DIRECT writes.
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)
                direct = False
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4096)
def url_hash(url: str) -> str:
    """The name under which a URL's blocks are stored: hex sha256 of the URL."""
    return hashlib.sha256(url.encode()).hexdigest()


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
    the fast read path. After a disk-full error nothing is stored for ``retry_store_after``
    seconds of ``clock`` (reads keep working, as pass-through).
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
        clock: Callable[[], float] = time.monotonic,
        writer: Writer = write_block_file,
    ) -> None:
        if block_size <= 0 or max_bytes < 0 or max_fetches <= 0 or max_run_blocks <= 0:
            raise ValueError("block_size, max_fetches, max_run_blocks must be > 0")
        self.root = Path(root)
        self.block_size = block_size
        self.max_bytes = max_bytes
        self._data = str(self.root / FORMAT)
        self.max_run_blocks = max_run_blocks
        self._max_open_files = max_open_files
        self._retry_store_after = retry_store_after
        self._clock = clock
        self._writer = writer
        self._fetch_limiter = trio.CapacityLimiter(max_fetches)

        self._idents: dict[str, FileIdentity] = {}
        self._lru: OrderedDict[BlockKey, _Block] = OrderedDict()  # oldest first
        self._file_blocks: dict[str, set[int]] = {}
        self._verified: set[BlockKey] = set()
        self._pins: dict[BlockKey, int] = {}
        self._flights: dict[tuple[FileIdentity, int], _Flight] = {}
        self._fds: OrderedDict[BlockKey, int] = OrderedDict()
        # Blocks stored lately, still in the memory they arrived in: reads of them (a
        # sequential reader behind its read-ahead) cost no copy and no system call.
        self._fresh: OrderedDict[BlockKey, memoryview] = OrderedDict()
        self._fresh_bytes = 0
        self._max_fresh_bytes = max_fresh_bytes
        self._unread: set[BlockKey] = set()  # kept in memory and not read by anyone yet
        self._taken: set[BlockKey] = set()  # read from a fetch still storing its blocks
        self._buffered_until = -math.inf  # clock time until which writes keep the page cache
        self._active_reads = 0  # read() calls in progress
        self._dirty: set[BlockKey] = set()
        self._total = 0
        self._reserved = 0
        self._tick = 0
        self._tmp_seq = 0
        self._paused_until: float | None = None
        self._nowait = bool(_NOWAIT)
        self._closed = False
        self._counters = {"hits": 0, "misses": 0, "bytes_fetched": 0, "passthrough": 0}
        self._evicted = 0

        os.makedirs(self._data, exist_ok=True)
        self._lock_fd = _take_lock(self.root / "lock")
        try:
            self._db = sqlite3.connect(os.path.join(self._data, "index.sqlite3"))
            self._db.isolation_level = None  # autocommit; explicit BEGIN for batches
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._load()
        except BaseException:
            with contextlib.suppress(Exception):
                self._db.close()
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ public API

    async def read(self, ident: FileIdentity, offset: int, length: int, fetch: Fetcher) -> Buffer:
        """Return ``length`` bytes at ``offset`` of the file (fewer only at EOF).

        Cached blocks are read from disk; missing ones are fetched (adjacent missing
        blocks of this read in one fetcher call), stored and returned. Concurrent reads
        of a block wait for the one fetch in flight.

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

    async def _read(self, ident: FileIdentity, offset: int, length: int, fetch: Fetcher) -> Buffer:
        sp = blockmath.span(offset, length, ident.size, self.block_size)
        if sp is None:
            return b""
        fetched: dict[int, memoryview] = {}
        parts: list[Buffer] = []
        for k in range(sp.first, sp.last + 1):
            h = self._bind(ident)  # again after every await: the URL may have been rebound
            lo, hi = sp.slice_in(k, self.block_size)
            got = fetched.pop(k, None)
            if got is not None:
                self._counters["misses"] += 1
                parts.append(got[lo:hi])
                continue
            blk = self._lru.get((h, k))
            data: Buffer | None = None
            if blk is not None and (h, k) in self._verified:
                fresh = self._fresh.get((h, k))
                if fresh is not None:
                    data = fresh[lo:hi]
                    self._mark_read((h, k))
                    self._fresh.move_to_end((h, k))
                else:
                    data = self._pread_nowait((h, k), lo, hi)
                if data is not None:
                    self._touch((h, k), blk)
                    self._counters["hits"] += 1
            if data is None:
                tried = blk is not None and (h, k) in self._verified  # the page cache, just now
                data = await self._read_slow(ident, k, lo, hi, sp.last, fetch, fetched, tried)
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

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
        missing = self._missing(ident, h, wanted)
        if len(missing) < len(wanted):
            self._advise(h, wanted)  # read-ahead of blocks on disk: into the page cache
        todo = list(blockmath.runs(missing, self.max_run_blocks))
        if not todo:
            return 0
        pending = iter(todo)
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
                    for x, y in blockmath.runs(self._missing(ident, h, range(run[0], run[1] + 1))):
                        await self._fetch_run(ident, h, x, y, fetch, prefetch=True)
                        done += y - x + 1
                except Exception as exc:
                    errors.append(exc)
                finally:
                    if limiter is not None:
                        limiter.release()

        tokens = int(limiter.total_tokens) if limiter is not None else len(todo)
        async with trio.open_nursery() as nursery:
            for _ in range(min(len(todo), tokens, int(self._fetch_limiter.total_tokens))):
                nursery.start_soon(worker)
        if errors:
            raise errors[0]
        return done

    def is_cached(self, ident: FileIdentity, index: int) -> bool:
        """True if block ``index`` of this identity is stored (not necessarily verified)."""
        h = url_hash(ident.url)
        return self._idents.get(h) == ident and (h, index) in self._lru

    def is_pending(self, ident: FileIdentity, index: int) -> bool:
        """True if block ``index`` of this identity is being fetched right now."""
        return (ident, index) in self._flights

    def stats(self) -> CacheStats:
        """Current size and counters (counters persist across restarts)."""
        c = self._counters
        return CacheStats(
            bytes=self._total,
            max_bytes=self.max_bytes,
            blocks=len(self._lru),
            files=sum(1 for s in self._file_blocks.values() if s),
            hits=c["hits"],
            misses=c["misses"],
            bytes_fetched=c["bytes_fetched"],
            passthrough=c["passthrough"],
            evicted=self._evicted,
        )

    def clean(self) -> int:
        """Drop every block not in use right now, forget idle files, reset the counters.

        Returns the number of blocks dropped. Blocks pinned by a read in progress stay.
        """
        self._check_open()
        victims = [key for key in self._lru if not self._pins.get(key)]
        self._drop_many(victims)
        busy = {h for h, _ in self._pins} | {url_hash(i.url) for i, _ in self._flights}
        idle = [h for h in self._idents if h not in busy and not self._file_blocks.get(h)]
        self._db.execute("BEGIN")
        for h in idle:
            del self._idents[h]
            self._file_blocks.pop(h, None)
            self._db.execute("DELETE FROM files WHERE h = ?", (h,))
        self._db.execute("COMMIT")
        for key in self._counters:
            self._counters[key] = 0
        self._evicted = 0
        self._flush()
        for h in idle:
            with contextlib.suppress(OSError):
                os.rmdir(self._file_dir(h))
        return len(victims)

    def close(self) -> None:
        """Persist LRU order and counters, close descriptors and the index, release the lock.

        Idempotent. Fetches still in flight finish without storing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        except sqlite3.Error as exc:
            log.warning("cache at %s: could not save LRU order and counters: %s", self.root, exc)
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._db.close()
            os.close(self._lock_fd)

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read path

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
                    await self._verify(key, blk)
                    continue
                data = None if page_cache_tried else self._pread_nowait(key, lo, hi)
                page_cache_tried = False
                if data is None:
                    data = await self._pread_disk(key, blk, lo, hi)
                if data is not None:
                    self._touch(key, blk)
                    self._counters["hits"] += 1
                    return data
                continue
            flight = self._flights.get((ident, k))
            if flight is not None:
                await flight.event.wait()
                if flight.data is not None:
                    self._counters["misses"] += 1
                    self._mark_read(key, storing=self._flights.get((ident, k)) is flight)
                    return flight.data[lo:hi]
                if flight.error is not None:
                    raise flight.error
                continue  # that fetch was cancelled: try again
            j = k
            while j < last and (h, j + 1) not in self._lru and (ident, j + 1) not in self._flights:
                j += 1
            blocks = await self._fetch_run(ident, h, k, j, fetch)
            for i in range(k + 1, j + 1):
                fetched[i] = blocks[i - k]
            for i in range(k, j + 1):
                self._mark_read((h, i))  # stored (or not) by now
            self._counters["misses"] += 1
            return blocks[0][lo:hi]

    def _pread_nowait(self, key: BlockKey, lo: int, hi: int) -> bytes | bytearray | None:
        """Read ``[lo, hi)`` of a verified block if it is in the page cache; else None.

        Synchronous: no await, so the block cannot be evicted meanwhile.
        """
        fd = self._fd(key)
        if fd is None:
            return None
        n = hi - lo
        if not self._nowait:
            data = os.pread(fd, n, lo)
            return data if len(data) == n else None
        buf = bytearray(n)
        try:
            got = os.preadv(fd, [buf], lo, _NOWAIT)
        except BlockingIOError:
            # Not in the page cache: read it in a thread. (Sequential readers have
            # had their next blocks advised into the page cache by prefetch();
            # a random reader must not pull in a whole block for 64 KiB.)
            return None
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            self._nowait = False
            return self._pread_nowait(key, lo, hi)
        return buf if got == n else None

    def _fd(self, key: BlockKey) -> int | None:
        """A kept-open descriptor of a stored block's file (None: the file is gone)."""
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        try:
            fd = os.open(self._block_path(*key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop_many([key])
            return None
        self._fds[key] = fd
        if len(self._fds) > self._max_open_files:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _advise(self, h: str, indices: Iterable[int]) -> None:
        """Ask the kernel to read stored blocks from disk ahead of their readers."""
        for k in indices:
            if (h, k) in self._lru:
                fd = self._fd((h, k))
                if fd is not None:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)

    async def _pread_disk(self, key: BlockKey, blk: _Block, lo: int, hi: int) -> bytes | None:
        """Read ``[lo, hi)`` of a block from disk; None if the block changed meanwhile or
        the file is short (then it is dropped).

        A small read while no other read is in progress is done right here, blocking
        the event loop for one disk read (about 0.1 ms here): the hop to a worker
        thread and back cost more than the read itself (random 64 KiB reads from the
        cache: about 2,100/s through a thread, 3,900/s inline). Otherwise the read
        goes to a worker thread, so that concurrent readers' disk reads overlap.
        """
        if self._active_reads <= 1 and hi - lo <= INLINE_READ_MAX:
            fd = self._fd(key)
            data = os.pread(fd, hi - lo, lo) if fd is not None else None
        else:
            self._pin(key)
            try:
                path = self._block_path(*key)
                data = await trio.to_thread.run_sync(_pread_path, path, lo, hi - lo)
            finally:
                self._unpin(key)
        if self._lru.get(key) is not blk:
            return None
        if data is None or len(data) != hi - lo:
            log.warning("block file %s is short; dropping it", self._block_path(*key))
            self._drop_many([key])
            return None
        return data

    async def _verify(self, key: BlockKey, blk: _Block) -> None:
        """Check a block's checksum once per process lifetime; drop it if it is wrong."""
        self._pin(key)
        try:
            crc = await trio.to_thread.run_sync(_crc_path, self._block_path(*key), blk.length)
        finally:
            self._unpin(key)
        if self._lru.get(key) is not blk:
            return
        if crc == blk.crc:
            self._verified.add(key)
            return
        log.warning(
            "block file %s is corrupt or truncated; fetching it again", self._block_path(*key)
        )
        self._drop_many([key])

    def _keep_fresh(self, key: BlockKey, data: memoryview) -> None:
        """Keep a just-stored block's memory for its readers, within ``max_fresh_bytes``.

        Blocks already read from memory go first. When a block must go before anyone
        read it, readers lag behind their read-ahead by more than this memory holds
        (several streams at once): for :data:`BUFFERED_FOR` seconds, blocks are then
        written through the page cache, so that their readers find them there and
        not on disk (8 streams: otherwise every byte was read back from disk).
        """
        if self._max_fresh_bytes <= 0:
            return
        self._fresh[key] = data
        self._fresh_bytes += len(data)
        if key in self._taken:
            self._taken.discard(key)
        else:
            self._unread.add(key)
        while self._fresh_bytes > self._max_fresh_bytes:
            victim = next((k for k in self._fresh if k not in self._unread), None)
            if victim is None:
                victim = next(iter(self._fresh))
                self._unread.discard(victim)
                if self._clock() >= self._buffered_until:
                    log.debug("readers lag their read-ahead: storing through the page cache")
                self._buffered_until = self._clock() + BUFFERED_FOR
            self._fresh_bytes -= len(self._fresh.pop(victim))

    def _mark_read(self, key: BlockKey, *, storing: bool = False) -> None:
        """A reader got (part of) this block: it no longer counts as unread read-ahead.

        ``storing``: the block's fetch is still storing it; _keep_fresh will see this.
        """
        if key in self._fresh:
            self._unread.discard(key)
        elif storing:
            self._taken.add(key)

    def _touch(self, key: BlockKey, blk: _Block) -> None:
        self._lru.move_to_end(key)
        blk.used = self._tick
        self._tick += 1
        self._dirty.add(key)

    # ------------------------------------------------------------------ fetch and store

    def _missing(self, ident: FileIdentity, h: str, indices: Iterable[int]) -> list[int]:
        return [k for k in indices if (h, k) not in self._lru and (ident, k) not in self._flights]

    async def _fetch_run(
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
        keys = [(ident, k) for k in range(first, last + 1)]
        flights = [_Flight() for _ in keys]
        self._flights.update(zip(keys, flights, strict=True))
        try:
            start, end = blockmath.block_range(first, last, ident.size, self.block_size)
            # The limiter is held until the blocks are on disk: fetched bytes waiting for
            # a slow disk must not pile up in memory (at most max_fetches runs at once).
            async with self._fetch_limiter:
                data = await fetch(start, end)
                if len(data) != end - start:
                    message = f"{ident.url}: asked for bytes {start}-{end - 1}, got {len(data)}"
                    raise BadFetch(message)
                self._counters["bytes_fetched"] += len(data)
                # Blocks are shared with waiters: read-only views of the fetched buffer.
                view = memoryview(data).toreadonly()
                bs = self.block_size
                blocks = [view[i * bs : (i + 1) * bs] for i in range(last - first + 1)]
                for flight, block in zip(flights, blocks, strict=True):
                    flight.data = block
                    flight.event.set()  # waiters are served from memory while we store
                # Fetched bytes are stored even if the fetch's caller is cancelled meanwhile
                # (a reader closed its file): throwing them away costs another download.
                with trio.CancelScope(shield=True):
                    for k, block in enumerate(blocks, first):
                        await self._store(ident, h, k, block)
            return blocks
        except Exception as exc:
            if not prefetch:
                for flight in flights:
                    if not flight.event.is_set():
                        flight.error = exc
            raise
        finally:
            for key, flight in zip(keys, flights, strict=True):
                flight.event.set()  # no-op if already set; wakes waiters of a cancelled fetch
                if self._flights.get(key) is flight:
                    del self._flights[key]
                self._taken.discard((h, key[1]))

    async def _store(self, ident: FileIdentity, h: str, k: int, data: memoryview) -> None:
        """Store a fetched block crash-safely, or count it as pass-through.

        Never raises for local storage problems (they are logged); only cancellation.
        """
        key = (h, k)
        if self._closed or self._idents.get(h) != ident or key in self._lru:
            return
        if self._paused_until is not None and self._clock() < self._paused_until:
            self._counters["passthrough"] += 1
            return
        n = len(data)
        if not self._make_room(n):
            self._counters["passthrough"] += 1
            return
        self._reserved += n
        final = self._block_path(h, k)
        self._tmp_seq += 1
        tmp = f"{final}.{os.getpid()}-{self._tmp_seq}.tmp"
        stored = False
        try:
            direct = self._max_fresh_bytes > 0 and self._clock() >= self._buffered_until
            crc = await trio.to_thread.run_sync(self._write_tmp, tmp, data, direct)
            # The await above split the critical section: re-check everything.
            if self._closed or self._idents.get(h) != ident or key in self._lru:
                return
            os.replace(tmp, final)
            try:
                self._insert_block(ident, h, k, n, crc)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(final)
                raise
            stored = True
            self._lru[key] = _Block(n, crc, self._tick)
            self._tick += 1
            self._file_blocks.setdefault(h, set()).add(k)
            self._verified.add(key)
            self._total += n
            self._keep_fresh(key, data)
            if self._paused_until is not None:
                log.info("cache at %s stores blocks again", self.root)
                self._paused_until = None
        except (OSError, sqlite3.Error) as exc:
            self._counters["passthrough"] += 1
            self._storage_failed(exc)
        finally:
            self._reserved -= n
            if not stored:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if stored and len(self._dirty) >= 1024:
            self._flush()

    def _insert_block(self, ident: FileIdentity, h: str, k: int, n: int, crc: int) -> None:
        """Index a block and (again) its file's identity, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(
                _UPSERT_FILE,
                (h, ident.url, ident.size, ident.etag, ident.mtime_ns),
            )
            db.execute(
                "INSERT INTO blocks (h, idx, length, crc, used) VALUES (?, ?, ?, ?, ?)",
                (h, k, n, crc, self._tick),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write_tmp(self, tmp: str, data: memoryview, direct: bool) -> int:
        """Runs in a worker thread: make the block's directory, write+fsync ``tmp``,
        and return the block's checksum (computed here, off the event loop)."""
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
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

    def _make_room(self, n: int) -> bool:
        """Evict least recently used unpinned blocks until ``n`` more bytes fit the cap."""
        excess = self._total + self._reserved + n - self.max_bytes
        if excess <= 0:
            return True
        if n > self.max_bytes:
            return False
        victims: list[BlockKey] = []
        freed = 0
        for key, blk in self._lru.items():
            if self._pins.get(key):
                continue
            victims.append(key)
            freed += blk.length
            if freed >= excess:
                break
        if freed < excess:
            return False
        self._drop_many(victims)
        self._evicted += len(victims)
        return True

    # ------------------------------------------------------------------ bookkeeping

    def _bind(self, ident: FileIdentity) -> str:
        """Make ``ident`` the identity the URL's blocks belong to; drop blocks of another."""
        h = url_hash(ident.url)
        cur = self._idents.get(h)
        if cur is ident or cur == ident:
            return h
        if cur is not None:
            log.info("%s changed (%s -> %s); dropping its cached blocks", ident.url, cur, ident)
            self._drop_many([(h, k) for k in sorted(self._file_blocks.get(h, ()))])
        self._idents[h] = ident
        try:
            self._db.execute(
                _UPSERT_FILE,
                (h, ident.url, ident.size, ident.etag, ident.mtime_ns),
            )
        except sqlite3.Error as exc:  # harmless: _insert_block writes the row with each block
            self._storage_failed(exc)
        return h

    def _drop_many(self, keys: list[BlockKey]) -> None:
        """Forget blocks: index rows first (one transaction), then the files.

        A crash between the two leaves orphan files, which the next start sweeps.
        """
        if not keys:
            return
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM blocks WHERE h = ? AND idx = ?", keys)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # Rows left behind point at files removed below; the next start drops them.
            self._storage_failed(exc)
        for key in keys:
            blk = self._lru.pop(key)
            self._total -= blk.length
            self._file_blocks[key[0]].discard(key[1])
            self._verified.discard(key)
            self._dirty.discard(key)
            fresh = self._fresh.pop(key, None)
            if fresh is not None:
                self._fresh_bytes -= len(fresh)
                self._unread.discard(key)
            fd = self._fds.pop(key, None)
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._block_path(*key))

    def _pin(self, key: BlockKey) -> None:
        self._pins[key] = self._pins.get(key, 0) + 1

    def _unpin(self, key: BlockKey) -> None:
        left = self._pins[key] - 1
        if left:
            self._pins[key] = left
        else:
            del self._pins[key]

    def _flush(self) -> None:
        """Write LRU ticks of touched blocks and the counters to the index."""
        self._db.execute("BEGIN")
        self._db.executemany(
            "UPDATE blocks SET used = ? WHERE h = ? AND idx = ?",
            [(self._lru[key].used, *key) for key in self._dirty],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self._counters.items()
        )
        self._db.execute("COMMIT")
        self._dirty.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"block cache at {self.root} is closed")

    def _file_dir(self, h: str) -> str:
        return os.path.join(self._data, h[:2], h)

    def _block_path(self, h: str, k: int) -> str:
        return os.path.join(self._data, h[:2], h, str(k))

    # ------------------------------------------------------------------ startup

    def _load(self) -> None:
        """Read the index, reconcile it with the files on disk, and evict to the cap."""
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        known = {"block_size": self.block_size, "checksum": CHECKSUM_ID}
        # An index without a checksum key is older than xxh3: its sums are crc32.
        found = {"block_size": meta.get("block_size", self.block_size)}
        found["checksum"] = meta.get("checksum", 1 if "block_size" in meta else CHECKSUM_ID)
        if found != known:
            log.warning(
                "cache at %s was written with %s, not %s: emptying it",
                self.root,
                found,
                known,
            )
            db.execute("DELETE FROM blocks")
            db.execute("DELETE FROM files")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", known.items())
        for name in self._counters:
            self._counters[name] = int(meta.get(name, 0))
        for h, url, size, etag, mtime_ns in db.execute("SELECT * FROM files"):
            self._idents[h] = FileIdentity(url, size, etag, mtime_ns)
        rows: dict[BlockKey, _Block] = {}
        for h, k, length, crc, used in db.execute("SELECT * FROM blocks ORDER BY used"):
            rows[(h, k)] = _Block(length, crc, used)
            self._tick = max(self._tick, used + 1)

        on_disk = self._sweep(rows)
        stale = []
        for key, blk in rows.items():
            ident = self._idents.get(key[0])
            ok = (
                ident is not None
                and on_disk.get(key) == blk.length
                and 0 <= key[1] < blockmath.block_count(ident.size, self.block_size)
                and blk.length == blockmath.block_length(key[1], ident.size, self.block_size)
            )
            if ok:
                self._lru[key] = blk
                self._file_blocks.setdefault(key[0], set()).add(key[1])
                self._total += blk.length
            else:
                stale.append(key)
        if stale:
            log.info(
                "cache at %s: dropping %d blocks missing or wrong on disk", self.root, len(stale)
            )
            db.execute("BEGIN")
            db.executemany("DELETE FROM blocks WHERE h = ? AND idx = ?", stale)
            db.execute("COMMIT")
            for key in stale:
                with contextlib.suppress(OSError):
                    os.unlink(self._block_path(*key))
        if self._total > self.max_bytes:
            self._make_room(0)

    def _sweep(self, rows: dict[BlockKey, _Block]) -> dict[BlockKey, int]:
        """Delete ``*.tmp`` and files the index does not know; return sizes of the rest."""
        sizes: dict[BlockKey, int] = {}
        removed = 0
        for prefix in os.scandir(self._data):
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
            log.info("cache at %s: removed %d leftover files", self.root, removed)
        return sizes


def check_invariants(cache: BlockCache) -> None:
    """fsck for a quiescent cache (no reads running): raise AssertionError on any mismatch.

    Checks that the index, the in-memory state and the files on disk agree, that every
    block file has the recorded length and checksum, that no ``.tmp`` or unknown file
    exists, and that the size accounting adds up and respects the cap.
    """
    c = cache
    assert not c._flights, f"flights left: {list(c._flights)}"
    assert not c._pins, f"pins left: {c._pins}"
    assert c._reserved == 0, f"reserved bytes left: {c._reserved}"
    rows = {
        (h, k): (length, crc)
        for h, k, length, crc in c._db.execute("SELECT h, idx, length, crc FROM blocks")
    }
    mem = {key: (b.length, b.crc) for key, b in c._lru.items()}
    assert rows == mem, f"index and memory differ: {set(rows) ^ set(mem)}"
    files = {
        h: FileIdentity(url, size, etag, mtime_ns)
        for h, url, size, etag, mtime_ns in c._db.execute("SELECT * FROM files")
    }
    for h in {h for h, _ in rows}:
        assert files.get(h) == c._idents.get(h), f"identity of {h} differs in index and memory"
    for (h, k), (length, _) in rows.items():
        ident = files.get(h)
        assert ident is not None, f"block {h}/{k} of an unknown file"
        assert url_hash(ident.url) == h
        assert length == blockmath.block_length(k, ident.size, c.block_size), f"{h}/{k} length"
    per_file = {h: {k for hh, k in rows if hh == h} for h in {h for h, _ in rows}}
    assert per_file == {h: s for h, s in c._file_blocks.items() if s}, "per-file block sets"
    assert c._total == sum(length for length, _ in rows.values()), "size accounting"
    assert c._total <= c.max_bytes, f"over the cap: {c._total} > {c.max_bytes}"
    assert c._verified <= set(rows) and set(c._fds) <= set(rows)
    assert set(c._fresh) <= c._verified, "a block kept in memory is not a verified stored one"
    assert c._unread <= set(c._fresh) and not c._taken
    assert c._fresh_bytes == sum(len(v) for v in c._fresh.values()) <= max(c._max_fresh_bytes, 0)
    for key, view in c._fresh.items():
        assert (len(view), block_checksum(view)) == rows[key], f"memory copy of {key} differs"
    on_disk: set[BlockKey] = set()
    for dirpath, _, names in os.walk(c._data):
        for name in names:
            path = os.path.join(dirpath, name)
            if dirpath == c._data:
                assert name.startswith("index.sqlite3"), f"unexpected file {path}"
                continue
            assert name.isdigit(), f"unexpected file {path}"
            key = (os.path.basename(dirpath), int(name))
            assert path == c._block_path(*key), f"misplaced file {path}"
            assert key in rows, f"file not in the index: {path}"
            with open(path, "rb") as f:
                body = f.read()
            assert (len(body), block_checksum(body)) == rows[key], f"bad contents: {path}"
            on_disk.add(key)
    assert on_disk == set(rows), f"index rows without files: {set(rows) - on_disk}"


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CacheLocked(
            f"cache directory {path.parent} is in use by another davfed (pid {holder})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _pread_path(path: str, offset: int, n: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def _crc_path(path: str, length: int) -> int | None:
    try:
        with open(path, "rb") as f:
            body = f.read(length + 1)
    except FileNotFoundError:
        return None
    return block_checksum(body) if len(body) == length else None
