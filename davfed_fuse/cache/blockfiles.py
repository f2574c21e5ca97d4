"""Block files on disk: where they live, how they are written, how they are read.

Owns: the layout ``<data>/<h[:2]>/<h>/<k>`` (and ``<k>.<pid>-<n>.tmp`` while written),
the pool of kept-open read descriptors, and the I/O policy: ``O_DIRECT`` writes of
page-aligned whole-page memory (checked with :func:`davfed_fuse.buffers.is_page_aligned`,
anything else is written buffered), ``preadv(RWF_NOWAIT)`` reads that succeed only
from the page cache, ``POSIX_FADV_WILLNEED`` for read-ahead of stored blocks.
Must not import: any other module of the cache but ``model``; trio, pyfuse3, httpx.
Nothing here knows the index: a block file exists on disk before its row, and whether
a file is a block of the cache is the index's to say.

:func:`write_block_file`, :func:`pread_path` and :func:`checksum_of_file` run in worker
threads; :class:`BlockFiles` is used from the event loop only.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections import OrderedDict
from collections.abc import Callable

from davfed_fuse.buffers import Buffer, is_page_aligned
from davfed_fuse.cache.model import BlockKey, block_checksum
from davfed_fuse.cache.private import FILE_MODE

#: Writes ``data`` to a new file at ``path`` and fsyncs it; runs in a worker thread. The
#: third argument says whether the write may bypass the page cache (``O_DIRECT``).
Writer = Callable[[str, Buffer, bool], None]

#: Reads of a block file up to this size may block the event loop (``BlockCache._pread_disk``).
INLINE_READ_MAX = 256 * 1024

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_DIRECT = getattr(os, "O_DIRECT", 0)


def write_block_file(path: str, data: Buffer, direct: bool = False) -> None:
    """Default :data:`Writer`: create ``path`` exclusively, write all of ``data``, fsync.

    With ``direct``, whole pages of page-aligned memory (the large fetch buffers of
    :func:`davfed_fuse.buffers.new_buffer` are memory maps) are written with
    ``O_DIRECT``: straight from that memory to the disk, with no copy into the page
    cache. Any other buffer (a bytearray, a short last block, a slice off a page
    boundary), and a file system without ``O_DIRECT``, is written buffered.
    """
    view = memoryview(data)
    direct = direct and bool(_DIRECT) and is_page_aligned(view)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (_DIRECT if direct else 0), FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not direct:
            raise
        fd = os.open(path, flags, FILE_MODE)  # a file system without O_DIRECT (older tmpfs)
        direct = False
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except OSError as exc:
                if exc.errno != errno.EINVAL or not direct:
                    raise
                # A file system that opens with O_DIRECT but refuses the write.
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)
                direct = False
        os.fsync(fd)
    finally:
        os.close(fd)


def pread_path(path: str, offset: int, n: int) -> bytes | None:
    """``n`` bytes at ``offset`` of the file at ``path`` (None if it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def checksum_of_file(path: str, length: int) -> int | None:
    """The block checksum of the file at ``path``; None if it is gone or not ``length`` long."""
    try:
        with open(path, "rb") as f:
            body = f.read(length + 1)
    except FileNotFoundError:
        return None
    return block_checksum(body) if len(body) == length else None


def advise(fd: int) -> None:
    """Ask the kernel to read a stored block from disk ahead of its reader."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)


class BlockFiles:
    """The block files under ``data`` and up to ``max_open_files`` kept-open descriptors."""

    def __init__(self, data: str, max_open_files: int) -> None:
        self.data = data
        self.max_open_files = max_open_files
        self.fds: OrderedDict[BlockKey, int] = OrderedDict()
        self._nowait = bool(_NOWAIT)
        self._tmp_seq = 0

    def file_dir(self, h: str) -> str:
        return os.path.join(self.data, h[:2], h)

    def path(self, h: str, k: int) -> str:
        return os.path.join(self.data, h[:2], h, str(k))

    def tmp_path(self, h: str, k: int) -> str:
        """A fresh name to write block ``k`` of ``h`` under before it is renamed into place."""
        self._tmp_seq += 1
        return f"{self.path(h, k)}.{os.getpid()}-{self._tmp_seq}.tmp"

    def fd(self, key: BlockKey) -> int | None:
        """A kept-open descriptor of a block's file (None: the file is gone)."""
        fd = self.fds.get(key)
        if fd is not None:
            self.fds.move_to_end(key)
            return fd
        try:
            fd = os.open(self.path(*key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self.fds[key] = fd
        if len(self.fds) > self.max_open_files:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def close_fd(self, key: BlockKey) -> None:
        fd = self.fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def pread_cached(self, fd: int, lo: int, hi: int) -> bytearray | None:
        """``[lo, hi)`` of the file if all of it is in the page cache, else None.

        Never waits for the disk (``RWF_NOWAIT``). Where the kernel or the file system
        cannot promise that, it answers None: the caller then reads in a way that may
        wait (see ``BlockCache._pread_disk``).
        """
        if not self._nowait:
            return None
        n = hi - lo
        buf = bytearray(n)
        try:
            got = os.preadv(fd, [buf], lo, _NOWAIT)
        except BlockingIOError:
            # Not in the page cache. (Sequential readers have had their next blocks
            # advised into the page cache by prefetch(); a random reader must not pull
            # in a whole block for 64 KiB.)
            return None
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            self._nowait = False
            return None
        return buf if got == n else None
