"""Sequential read-ahead for one open file: a pure window policy and a reader that applies it.

Owns: :class:`ReadaheadPolicy` (which blocks to prefetch after a read; a window that
starts small and doubles while reads stay sequential, as in mountpoint-s3's prefetcher),
:class:`ScatterDetector` (recognises a file being read all over, as an analysis job
reads the baskets of a few branches of a ROOT file: then the whole file is fetched, as
CVMFS does) and :class:`FileReader` (serves reads of one open file from a
:class:`BlockCache` and runs the prefetches as background tasks in a nursery it is given).
Must not import: pyfuse3, httpx, or any davfed module but ``blockmath`` and
``block_cache``. The policy does no I/O and keeps no clock.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

import trio

from davfed_fuse.buffers import Buffer, new_buffer
from davfed_fuse.cache import blockmath
from davfed_fuse.cache.blockcache import BadFetch, BlockCache, Fetcher, FileIdentity

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

#: Files up to this size (and up to a quarter of the cache) are fetched whole once
#: they are recognised as read all over (:class:`ScatterDetector`).
WHOLE_FILE_MAX = 4 * GiB
#: Seconds after which a file read all over is fetched whole again when read on.
WHOLE_FILE_AGAIN = 10.0


class ReadaheadPolicy:
    """Decides, read by read, which blocks of one open file to prefetch.

    A read is *sequential* if it starts within ``seek_tolerance`` bytes of where the
    previous sequential stream ended (FUSE may deliver neighbouring reads slightly out
    of order). The first read at offset 0 starts a stream. While a stream goes on, the
    window doubles (up to ``max_bytes``) each time the reader enters a new block, and
    once fewer than half of the window's blocks lie ahead of the reader, the policy
    asks for the blocks up to ``window`` blocks past the read. Any other read resets
    the window to ``initial_blocks`` and prefetches nothing.

    Doubling per block entered (not per top-up) reaches a 16-block window after the
    reader's fourth block: over a 50 ms link, a top-up per half window took the first
    1.5 s of a file (about 130 MB) to open the window, at half the link's speed.
    """

    def __init__(
        self,
        file_size: int,
        block_size: int,
        *,
        initial_blocks: int = 1,
        max_bytes: int = 64 * MiB,
        seek_tolerance: int | None = None,
    ) -> None:
        if initial_blocks <= 0 or block_size <= 0:
            raise ValueError("initial_blocks and block_size must be > 0")
        self.block_size = block_size
        self.blocks = blockmath.block_count(file_size, block_size)
        self.file_size = file_size
        self.enabled = max_bytes > 0  # readahead=0: no read-ahead at all
        self.max_blocks = max(1, max_bytes // block_size)
        self.initial_blocks = min(initial_blocks, self.max_blocks)
        self.seek_tolerance = block_size if seek_tolerance is None else seek_tolerance
        self.window = self.initial_blocks  # blocks
        self._next: int | None = None  # where the current stream's next read should start
        self._ahead = 0  # first block not yet handed out for prefetch
        self._streaming = False  # a prefetch was issued since the last reset
        self._block = -1  # the last block the current stream has read in

    def on_read(self, offset: int, length: int) -> range:
        """Record a read; return the block indices to prefetch now (often empty)."""
        sp = blockmath.span(offset, length, self.file_size, self.block_size)
        if sp is None or not self.enabled:
            return range(0)
        end = min(offset + length, self.file_size)
        sequential = self._next is not None and abs(offset - self._next) <= self.seek_tolerance
        if not sequential:
            self.window = self.initial_blocks
            self._ahead = sp.last + 1
            self._streaming = False
            self._block = sp.last
            self._next = end
            if offset != 0:
                return range(0)
        self._next = max(end, self._next or 0)
        if self._streaming and sp.last > self._block:
            self.window = min(self.window << (sp.last - self._block), self.max_blocks)
        self._block = max(self._block, sp.last)
        self._ahead = max(self._ahead, sp.last + 1)
        if 2 * (self._ahead - sp.last - 1) > self.window:
            return range(0)  # more than half a window is still ahead of the reader
        self._streaming = True
        start = self._ahead
        self._ahead = max(start, min(sp.last + 1 + self.window, self.blocks))
        return range(start, self._ahead)

    @property
    def streaming(self) -> bool:
        """Whether the last read continued a sequential stream (read-ahead is running)."""
        return self._streaming

    def retract(self, first: int) -> None:
        """The caller did not prefetch blocks ``first`` onwards: offer them again later."""
        self._ahead = min(self._ahead, first)


class ScatterDetector:
    """Recognises a file read all over, read by read; pure (no I/O, no clock).

    A read *jumps* if it does not continue the reader's sequential stream. Once
    ``min_jumps`` reads have jumped, the reads so far have touched ``min_blocks``
    distinct blocks, and they asked for at least ``min_density`` of those blocks'
    bytes, the file is being read all over: :meth:`on_read` says so, once. Random
    small reads (64 KiB in 4 MiB blocks: 1.5 %) stay below the density; a sequential
    reader does not jump. Measured with an uproot job (3 of 10 branches of a ROOT
    file in full, one more for 40 entry ranges): its memory-mapped reads jump between
    several places of the file at once, 1 MiB at a time, and touch every block.
    """

    def __init__(
        self,
        file_size: int,
        block_size: int,
        *,
        max_file: int = WHOLE_FILE_MAX,
        min_jumps: int = 3,
        min_blocks: int = 4,
        min_density: float = 0.125,
    ) -> None:
        self.file_size = file_size
        self.block_size = block_size
        self.enabled = block_size < file_size <= max_file
        self.min_jumps = min_jumps
        self.min_blocks = min_blocks
        self.min_density = min_density
        self.jumps = 0
        self.asked = 0  # bytes asked for
        self.blocks: set[int] = set()
        self.fired = False
        self.fetched_at = -1e9  # (trio) time of the last whole-file fetch, set by the reader

    def on_read(self, offset: int, length: int, *, jumped: bool) -> bool:
        """Record a read; True once: the file is read all over, fetch all of it now."""
        if self.fired or not self.enabled:
            return False
        sp = blockmath.span(offset, length, self.file_size, self.block_size)
        if sp is None:
            return False
        self.jumps += jumped
        self.asked += min(offset + length, self.file_size) - offset
        if len(self.blocks) < self.min_blocks * 64:  # enough to decide; memory stays small
            self.blocks.update(range(sp.first, sp.last + 1))
        if self.jumps < self.min_jumps or len(self.blocks) < self.min_blocks:
            return False
        if self.asked < self.min_density * len(self.blocks) * self.block_size:
            return False
        self.fired = True
        return True


#: Files whose reads a mount remembers across opens (an analysis job's I/O library
#: may open the file for every range it reads: uproot 5.7 through fsspec does).
REMEMBERED_FILES = 4096

_scatter: weakref.WeakKeyDictionary[BlockCache, OrderedDict[FileIdentity, ScatterDetector]] = (
    weakref.WeakKeyDictionary()
)


def scatter_detector(cache: BlockCache, ident: FileIdentity, max_file: int) -> ScatterDetector:
    """The one :class:`ScatterDetector` of a file in ``cache``, shared by all its opens."""
    files = _scatter.setdefault(cache, OrderedDict())
    found = files.get(ident)
    if found is None:
        found = files[ident] = ScatterDetector(ident.size, cache.block_size, max_file=max_file)
        if len(files) > REMEMBERED_FILES:
            files.popitem(last=False)
    else:
        files.move_to_end(ident)
    return found


class FileReader:
    """Reads of one open file: served by the cache, with the policy's read-ahead running
    in the background.

    ``nursery`` owns the prefetch tasks (the mount's nursery; it must outlive the reader
    or :meth:`close` must be called). ``limiter`` bounds prefetch fetches and may be
    shared by all readers of a mount. At most the policy's maximum window of blocks is
    being prefetched for this reader at any time, so memory stays bounded. Prefetch
    failures are logged and counted, never raised: the read that needs the block then
    fetches it itself.

    ``fetch`` serves the byte ranges a read is answered with directly (a file's first
    read, random reads): small transfers a process waits for. ``fetch_ahead`` fetches
    whole blocks (read-ahead, fills, and blocks a read needs), which are bulk
    transfers. With separate connections for each, a whole block never occupies the
    warm connection the next direct read is waiting for (it would then open a new one
    and start TCP's slow start again: 0.4 s instead of 60 ms for 1 MiB at 50 ms RTT).
    """

    def __init__(
        self,
        cache: BlockCache,
        ident: FileIdentity,
        fetch: Fetcher,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        *,
        policy: ReadaheadPolicy | None = None,
        fetch_ahead: Fetcher | None = None,
    ) -> None:
        self.cache = cache
        self.ident = ident
        self.policy = policy or ReadaheadPolicy(ident.size, cache.block_size)
        whole_max = min(WHOLE_FILE_MAX, cache.max_bytes // 4) if self.policy.enabled else 0
        self.scatter = scatter_detector(cache, ident, whole_max)
        self._fetch = fetch
        self._fetch_ahead = fetch_ahead or fetch
        self._nursery = nursery
        self._limiter = limiter
        self._inflight = 0  # blocks handed to prefetch tasks not yet finished
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False
        self.prefetch_failures = 0
        self.prefetched_blocks = 0
        self._reads = 0

    async def read(self, offset: int, size: int) -> Buffer:
        """Return up to ``size`` bytes at ``offset`` (fewer only at EOF).

        Raises and cancellation: as :meth:`BlockCache.read`.
        """
        first_read = self._reads == 0
        self._reads += 1
        wanted = self.policy.on_read(offset, size)
        whole = self.scatter.on_read(offset, size, jumped=not self.policy.streaming)
        now = trio.current_time()
        if self.scatter.fired and now - self.scatter.fetched_at >= WHOLE_FILE_AGAIN:
            # Again (after a while): blocks evicted since are fetched, and the stored
            # ones are read from disk ahead of the job (the page cache moved on).
            whole = True
        direct = self._answer_directly(offset, size, first_read)
        if whole:
            self.scatter.fetched_at = now
            # the blocks of a direct read are filled by it, from its bytes
            self._fetch_whole_file(skip=direct or range(0))
        if direct is None:
            self._read_ahead(wanted)
            return await self.cache.read(self.ident, offset, size, self._fetch_ahead)
        # A stream's read-ahead starts with its first read: it goes over other
        # connections, to the endpoint this read's redirect names (the federation is
        # asked once), while the link is still idle in this read's slow start.
        self._read_ahead(wanted)
        data = await self._fetch(offset, min(offset + size, self.ident.size))
        # Then fill the cache with this read's blocks (not before: the reader must
        # not share the link with them), fetching only the bytes this read did not.
        self._start_prefetch(direct, speculative=False, known=(offset, data))
        return data

    def _fetch_whole_file(self, skip: range) -> None:
        """The file is read all over: fetch every block not cached, in the background.

        Not cancelled when this open closes: the next open of the file reads them.
        """
        if self._closed:
            return
        log.debug("%s is read all over: fetching all of it", self.ident.url)
        blocks = blockmath.block_count(self.ident.size, self.cache.block_size)
        for part in (range(0, skip.start), range(skip.stop if skip else 0, blocks)):
            if part:
                self._start_prefetch(part, speculative=False, counted=False)

    def _read_ahead(self, wanted: range) -> None:
        if not wanted or self._closed:
            return
        # At most a window of blocks in flight for this reader (memory stays bounded);
        # what does not fit is offered again by the policy on a later read.
        room = max(0, self.policy.max_blocks - self._inflight)
        wanted, rest = wanted[:room], wanted[room:]
        if rest:
            self.policy.retract(rest.start)
        step = self.cache.max_run_blocks  # one task per fetcher call, for exact accounting
        for i in range(0, len(wanted), step):
            self._start_prefetch(wanted[i : i + step])

    def _answer_directly(self, offset: int, size: int, first_read: bool) -> range | None:
        """The blocks of this read, if it is to be answered by a ranged GET of just its bytes.

        A read that starts a file, or jumps to a random place, should not wait for
        whole blocks (4 MiB by default: several round trips on a long link while
        TCP's window opens). When none of its blocks is cached or being fetched,
        its own bytes are fetched directly and its blocks go to the cache in the
        background. Small files and sequential reads go through the cache.
        """
        if self.ident.size <= self.cache.block_size or self._closed:
            return None
        if not first_read and self.policy.streaming:
            return None
        sp = blockmath.span(offset, size, self.ident.size, self.cache.block_size)
        if sp is None:
            return None
        blocks = range(sp.first, sp.last + 1)
        for k in blocks:
            if self.cache.is_cached(self.ident, k) or self.cache.is_pending(self.ident, k):
                return None
        return blocks

    def close(self) -> None:
        """Stop this reader's prefetches (blocks already fetched are still stored)."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()

    def _start_prefetch(
        self,
        blocks: range,
        *,
        speculative: bool = True,
        known: tuple[int, Buffer] | None = None,
        counted: bool = True,
    ) -> None:
        """Fetch ``blocks`` in the background. Closing the file cancels speculative
        fetches (read-ahead), not the fills of blocks a read has already used.
        ``known``: bytes of these blocks already fetched (offset, data), not fetched
        again. ``counted``: the blocks count against this reader's read-ahead window
        (a whole-file fetch does not: the limiter bounds it)."""
        scope = trio.CancelScope()
        if speculative:
            self._scopes.add(scope)
        n = len(blocks) if counted else 0
        self._inflight += n
        fetch = self._fetch_ahead if known is None else self._around(*known)
        self._nursery.start_soon(self._prefetch, blocks, scope, fetch, n)

    def _around(self, at: int, known: Buffer) -> Fetcher:
        """A fetcher that takes the bytes at ``[at, at + len(known))`` from ``known`` and
        fetches only the rest (the parts before and after it, at once)."""
        known_view = memoryview(known)

        async def fetch(start: int, end: int) -> Buffer:
            lo, hi = max(start, at), min(end, at + len(known_view))
            if lo >= hi:
                return await self._fetch_ahead(start, end)
            buffer = new_buffer(end - start)
            view = memoryview(buffer)
            view[lo - start : hi - start] = known_view[lo - at : hi - at]

            async def part(a: int, b: int) -> None:
                data = await self._fetch_ahead(a, b)
                if len(data) != b - a:
                    raise BadFetch(
                        f"{self.ident.url}: asked for bytes {a}-{b - 1}, got {len(data)}"
                    )
                view[a - start : b - start] = data

            async with trio.open_nursery() as nursery:
                if start < lo:
                    nursery.start_soon(part, start, lo)
                if hi < end:
                    nursery.start_soon(part, hi, end)
            return buffer

        return fetch

    async def _prefetch(
        self, blocks: range, scope: trio.CancelScope, fetch: Fetcher, counted: int
    ) -> None:
        n = 0
        try:
            with scope:
                n = await self.cache.prefetch(
                    self.ident, blocks.start, blocks.stop - 1, fetch, limiter=self._limiter
                )
            self.prefetched_blocks += n  # not `+= await ...`: that would lose updates
        except Exception as exc:
            self.prefetch_failures += 1
            log.debug("prefetch of %s blocks %s failed: %r", self.ident.url, blocks, exc)
        finally:
            self._scopes.discard(scope)
            self._inflight -= counted
