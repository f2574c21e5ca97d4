"""The pyfuse3 request handlers: each one decodes, calls one domain method, replies.

Owns: translation between the kernel's requests and davfed's namespace and
readers, and the one errno boundary: every handler runs inside
:func:`fuse_errors`, so nothing but ``FUSEError`` ever reaches pyfuse3 (any
other exception would unmount the filesystem).
Must not do: HTTP, caching, path arithmetic beyond joining a name to its parent.

Per-file state lives exactly as long as the kernel's interest in it: an open
file's reader until ``release``, a directory's listing until ``releasedir``, an
inode's number and what it was last opened as until the kernel ``forget``s it.
When the kernel has forgotten everything, every table is back to its size at
mount time; the root's extended attributes report those sizes (:data:`XATTR_TABLES`).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, XAttrNameT

from davfed_fuse.buffers import Buffer
from davfed_fuse.daemon import xattrs
from davfed_fuse.daemon.namespace import ROOT_INODE, Namespace
from davfed_fuse.daemon.openfiles import OpenFile, ReaderFactory
from davfed_fuse.daemon.status import MountView
from davfed_fuse.daemon.telemetry import Telemetry
from davfed_fuse.errors import ReadOnly, UpstreamTimeout, errno_for
from davfed_fuse.net.webdav import RemoteEntry

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

BLOCK_SIZE = 4096

#: The root's extended attributes: the daemon's pid, and the sizes of its tables
#: (a JSON object of name -> entries) for tests and operators to read from outside.
XATTR_PID = b"user.davfed.pid"
XATTR_TABLES = b"user.davfed.tables"

#: Table sizes a handler object gets from the parts it does not own (readers, federation).
TableSizes = Callable[[], Mapping[str, int]]


_EXPECTED = frozenset({errno.ENOENT, errno.EACCES, errno.EROFS})


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run ``handler`` so that every failure reaches the kernel as an errno.

    A handler of an object with a ``request_timeout`` gets that many seconds in
    all (waiting for another reader's fetch included); then it fails with
    ETIMEDOUT. No request waits for ever, whatever is stuck below it.
    """

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        budget = getattr(args[0], "request_timeout", math.inf) if args else math.inf
        try:
            try:
                with trio.fail_after(budget):
                    return await handler(*args, **kwargs)
            except trio.TooSlowError:  # a deadline passed: this one's, or one below it
                raise UpstreamTimeout(f"no answer within {budget:g} s") from None
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            code = errno_for(exc)
            telemetry: Telemetry | None = getattr(args[0], "telemetry", None) if args else None
            if telemetry is not None:
                telemetry.errno_answered(code)
            # Answers a user expects (no such file, denied, read-only) are not warnings;
            # their causes (an expired proxy, say) are logged once where they are found.
            level = logging.DEBUG if code in _EXPECTED else logging.WARNING
            log.log(level, "%s failed: %s (%s)", handler.__name__, exc, errno.errorcode[code])
            raise pyfuse3.FUSEError(code) from None

    return wrapper


@dataclass(frozen=True, slots=True)
class Attributes:
    """How entries look to the kernel."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int
    attr_timeout: float
    entry_timeout: float


class DavfedOperations(pyfuse3.Operations):
    """Read-only filesystem operations over a :class:`Namespace`."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        namespace: Namespace,
        attributes: Attributes,
        open_reader: ReaderFactory,
        *,
        request_timeout: float = math.inf,
        other_tables: TableSizes = dict,
        view: MountView | None = None,
        cold_mark: Callable[[], int] | None = None,
    ) -> None:
        super().__init__()
        #: Seconds any one request may take in all (see :func:`fuse_errors`).
        self.request_timeout = request_timeout
        self._ns = namespace
        self._attributes = attributes
        self._open_reader = open_reader
        self._other_tables = other_tables
        #: What the root's xattrs report; its counters get every read and errno.
        self.view = view
        self.telemetry = view.telemetry if view is not None else None
        # A number that changes while a read waits for a fetch (cache misses): cold reads.
        self._cold_mark = cold_mark
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[RemoteEntry]] = {}
        self._next_fh = 1
        # The identity each live inode had when last opened, for keep_cache
        # (dropped when the kernel forgets the inode: its cached pages are gone).
        self._opened_as: dict[int, tuple[int, int, str]] = {}

    def open_files(self) -> int:
        return len(self._files)

    def tables(self) -> dict[str, int]:
        """How many entries each per-inode, per-handle and cache table of the daemon holds."""
        return {
            **self._ns.tables(),
            "open_files": len(self._files),
            "open_dirs": len(self._dirs),
            "opened_as": len(self._opened_as),
            **self._other_tables(),
        }

    # -- attributes -----------------------------------------------------

    def _attrs(self, inode: int, entry: RemoteEntry) -> pyfuse3.EntryAttributes:
        a = self._attributes
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.generation = 0
        attrs.entry_timeout = a.entry_timeout
        attrs.attr_timeout = a.attr_timeout
        if entry.is_dir:
            attrs.st_mode = stat.S_IFDIR | a.dir_mode
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            attrs.st_mode = stat.S_IFREG | a.file_mode
            attrs.st_nlink = 1
            attrs.st_size = entry.size
        attrs.st_uid = a.uid
        attrs.st_gid = a.gid
        attrs.st_rdev = 0
        attrs.st_blksize = 1 << 20
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = entry.mtime_ns
        return attrs

    def _new_fh(self) -> FileHandleT:
        fh = FileHandleT(self._next_fh)
        self._next_fh += 1
        return fh

    @staticmethod
    def _name(raw: bytes) -> str:
        return os.fsdecode(raw)

    # -- namespace ------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._ns.path(parent_inode)
        decoded = self._name(name)
        if decoded == ".":
            # Only NFS export asks this; the kernel counts the reply like any other.
            entry = await self._ns.stat(parent)
            return self._attrs(self._ns.remember(parent), entry)
        if decoded == "..":
            raise pyfuse3.FUSEError(errno.ENOENT)  # the kernel resolves '..' itself
        inode, entry = await self._ns.lookup(parent, decoded)
        return self._attrs(inode, entry)

    @fuse_errors
    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode, await self._ns.stat(self._ns.path(inode)))

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        # No errno can be returned from forget: it must simply not fail.
        for inode, count in inode_list:
            if self._ns.forget(inode, count):
                self._opened_as.pop(inode, None)

    @fuse_errors
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        path = self._ns.path(inode)
        entry = await self._ns.stat(path)
        if not entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children = await self._ns.listdir(path)
        fh = self._new_fh()
        self._dirs[fh] = children
        return fh

    @fuse_errors
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # pyfuse3 serves only READDIRPLUS (it turns READDIRPLUS_AUTO off), and the kernel
        # counts every entry of such a reply as one lookup (fs/fuse/readdir.c,
        # fuse_direntplus_link; if it cannot link one, it sends a forget for it): so each
        # entry accepted is remembered like a lookup, and the kernel's forget releases it.
        # An entry that did not fit never reaches the kernel: it is released at once.
        children = self._dirs[fh]
        for index in range(start_id, len(children)):
            entry = children[index]
            inode = self._ns.remember(entry.path)
            name = os.fsencode(entry.name)
            if not pyfuse3.readdir_reply(token, name, self._attrs(inode, entry), index + 1):
                self._ns.forget(inode, 1)
                break

    @fuse_errors
    async def releasedir(self, fh: FileHandleT) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------

    @fuse_errors
    async def open(
        self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise ReadOnly("davfed is read-only")
        entry = await self._ns.stat(self._ns.path(inode))
        if entry.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        identity = (entry.size, entry.mtime_ns, entry.etag)
        unchanged = self._opened_as.get(inode) == identity
        self._opened_as[inode] = identity
        fh = self._new_fh()
        self._files[fh] = OpenFile(inode, entry, self._open_reader(entry))
        # The kernel may keep this file's pages only while its identity holds.
        return pyfuse3.FileInfo(fh=fh, keep_cache=unchanged, direct_io=False)

    @fuse_errors
    async def read(self, fh: FileHandleT, off: int, size: int) -> Buffer:  # type: ignore[override]
        telemetry, mark = self.telemetry, self._cold_mark
        if telemetry is None:
            return await self._files[fh].reader.read(off, size)
        started = time.perf_counter()
        before = mark() if mark is not None else 0
        data = await self._files[fh].reader.read(off, size)
        cold = mark is None or mark() != before
        telemetry.read_done(len(data), time.perf_counter() - started, cold)
        return data

    @fuse_errors
    async def release(self, fh: FileHandleT) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            await handle.reader.close()

    @fuse_errors
    async def flush(self, fh: FileHandleT) -> None:
        return None

    @fuse_errors
    async def access(self, inode: InodeT, mode: ModeT, ctx: pyfuse3.RequestContext) -> bool:
        if mode & os.W_OK:
            raise ReadOnly("davfed is read-only")
        await self._ns.stat(self._ns.path(inode))
        return True

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = data.f_bfree = data.f_bavail = 0
        data.f_files = self._ns.known_inodes()
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- extended attributes: the daemon's own (daemon.xattrs) --------------

    @fuse_errors
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT_INODE:
            if name == XATTR_PID:
                return str(os.getpid()).encode()
            if name == XATTR_TABLES:
                return json.dumps(self.tables(), sort_keys=True).encode()
        view = self.view
        decoded = os.fsdecode(name)
        if view is None or not decoded.startswith(xattrs.PREFIX):
            raise pyfuse3.FUSEError(errno.ENODATA)
        short = decoded[len(xattrs.PREFIX) :]
        value: str | None = None
        if inode == ROOT_INODE:
            value = xattrs.root_value(view, short)
        elif short in xattrs.FILE:
            entry = await self._ns.stat(self._ns.path(inode))
            if not entry.is_dir:
                value = xattrs.file_value(view, entry, short)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode()

    @fuse_errors
    async def listxattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> Sequence[XAttrNameT]:
        if self.view is None:
            return [XATTR_PID, XATTR_TABLES] if inode == ROOT_INODE else []
        if inode == ROOT_INODE:
            return [XAttrNameT(n) for n in xattrs.names(True, True)]
        entry = await self._ns.stat(self._ns.path(inode))
        return [XAttrNameT(n) for n in xattrs.names(False, entry.is_dir)]

    # -- everything that writes ------------------------------------------------

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = _read_only
    rename = link = create = write = setxattr = removexattr = _read_only


__all__ = [
    "ROOT_INODE",
    "XATTR_PID",
    "XATTR_TABLES",
    "Attributes",
    "DavfedOperations",
    "fuse_errors",
]
