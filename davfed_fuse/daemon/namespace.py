"""The mount's view of the federation's names: inodes, lookup counts, metadata caches.

Owns: the path <-> inode table, the kernel's lookup counts, and the TTL caches
of attributes, listings and misses.
Must not import: pyfuse3 (inode numbers here are plain ints), the block cache.

Inodes. The root is inode 1. Every other path gets the next unused number the
first time the kernel learns of it, and keeps it while the kernel holds a
reference. These handlers add to a path's lookup count, one per reply:
``lookup`` (through :meth:`Namespace.lookup`) and each entry that
``readdir_reply`` accepted (through :meth:`Namespace.remember`).
``forget`` subtracts; at zero the number is retired and never reused, so a
number always means one path. A number exists only with a count: every inode
but the root is in the table because the kernel holds it, so when the kernel
has forgotten everything the table holds the root alone. Retiring a path also
drops what the federation remembers for it (its redirect target): a file the
kernel still knows keeps its target across closes and opens.

Metadata. A stat (PROPFIND Depth 0) result is kept ``attr_timeout`` seconds,
a listing (Depth 1) ``dir_timeout`` seconds, and also fills the attribute
cache for every child, so ``ls -l`` costs one request. A name missing from a
fresh listing of its parent is ENOENT without a request; a NotFound answer is
remembered ``negative_timeout`` seconds. Concurrent requests for one path
share one PROPFIND.

When the federation cannot be reached, requests fail fast (EIO/ETIMEDOUT),
with one exception: the root's attributes, known since the mount was made,
are served from the last answer, so that the mountpoint itself stays
``stat``-able (``mount -a``, ``findmnt``, ``umount`` and shells need that).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from davfed_fuse.errors import NotFound, UpstreamError, UpstreamTimeout
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.webdav import RemoteEntry
from davfed_fuse.singleflight import SingleFlight

log = logging.getLogger(__name__)

ROOT_INODE = 1


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's children, in the server's order."""

    names: tuple[str, ...]


class Namespace:
    def __init__(
        self,
        federation: Federation,
        *,
        attr_timeout: float,
        dir_timeout: float,
        negative_timeout: float,
        clock: Callable[[], float],
        max_entries: int = 200_000,
    ) -> None:
        self._federation = federation
        self._attrs: TTLCache[str, RemoteEntry] = TTLCache(max_entries, attr_timeout, timer=clock)
        self._listings: TTLCache[str, Listing] = TTLCache(
            max(1, max_entries // 16), dir_timeout, timer=clock
        )
        self._missing: TTLCache[str, bool] = TTLCache(
            max_entries, max(negative_timeout, 1e-9), timer=clock
        )
        self._negative_timeout = negative_timeout
        self._stat_flight: SingleFlight[str, RemoteEntry] = SingleFlight()
        self._list_flight: SingleFlight[str, Listing] = SingleFlight()
        self._root: RemoteEntry | None = None  # the root's last answer
        self._path_of: dict[int, str] = {ROOT_INODE: ""}
        self._inode_of: dict[str, int] = {"": ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._next_inode = ROOT_INODE + 1

    # -- inode table ----------------------------------------------------

    def path(self, inode: int) -> str:
        """The path of a live inode; NotFound for a number the kernel should not hold."""
        try:
            return self._path_of[inode]
        except KeyError:
            raise NotFound(f"inode {inode} is not known") from None

    def remember(self, path: str) -> int:
        """Count one kernel reference to ``path`` and return its inode (new if it had none)."""
        inode = self._inode_of.get(path)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self._inode_of[path] = inode
            self._path_of[inode] = path
        if inode != ROOT_INODE:
            self._lookups[inode] = self._lookups.get(inode, 0) + 1
        return inode

    def forget(self, inode: int, count: int) -> bool:
        """The kernel dropped ``count`` references to ``inode``; True if that retired it."""
        if inode == ROOT_INODE:
            return False
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return False
        self._lookups.pop(inode, None)
        path = self._path_of.pop(inode, None)
        if path is None:
            return False
        if self._inode_of.get(path) == inode:
            del self._inode_of[path]
        self._federation.forget_target(path)
        return True

    def lookup_count(self, inode: int) -> int:
        return self._lookups.get(inode, 0)

    def known_inodes(self) -> int:
        return len(self._path_of)

    def tables(self) -> dict[str, int]:
        """Entries in each table (expired cache entries dropped first, so all are live)."""
        for cache in (self._attrs, self._listings, self._missing):
            cache.expire()
        return {
            "inodes": len(self._path_of),
            "paths": len(self._inode_of),
            "lookup_counts": len(self._lookups),
            "attr_cache": len(self._attrs),
            "listing_cache": len(self._listings),
            "negative_cache": len(self._missing),
            "metadata_requests": len(self._stat_flight) + len(self._list_flight),
        }

    # -- metadata -------------------------------------------------------

    async def stat(self, path: str) -> RemoteEntry:
        """Attributes of ``path`` (cached); NotFound if it does not exist."""
        entry = self._attrs.get(path)
        if entry is not None:
            return entry
        if path in self._missing:
            raise NotFound(f"{path}: no such file (cached)")
        parent = self._listings.get(posixpath.dirname(path)) if path else None
        if parent is not None and posixpath.basename(path) not in parent.names:
            raise NotFound(f"{path}: not in its directory's listing")
        return await self._stat_flight.run(path, lambda: self._fetch_stat(path))

    async def _fetch_stat(self, path: str) -> RemoteEntry:
        try:
            entry = await self._federation.stat(path)
        except NotFound:
            if self._negative_timeout > 0:
                self._missing[path] = True
            raise
        except (UpstreamError, UpstreamTimeout) as exc:
            if path or self._root is None:
                raise
            log.warning("federation unreachable (%s); the root keeps its last attributes", exc)
            return self._root
        self._attrs[path] = entry
        if not path:
            self._root = entry
        return entry

    async def lookup(self, parent_path: str, name: str) -> tuple[int, RemoteEntry]:
        """Find ``name`` in ``parent_path``; counts one kernel reference on success."""
        path = f"{parent_path}/{name}" if parent_path else name
        entry = await self.stat(path)
        return self.remember(path), entry

    async def listdir(self, path: str) -> list[RemoteEntry]:
        """The children of directory ``path`` with their attributes."""
        listing = self._listings.get(path)
        if listing is None:
            listing = await self._list_flight.run(path, lambda: self._fetch_listing(path))
        children = []
        for name in listing.names:
            child_path = f"{path}/{name}" if path else name
            entry = self._attrs.get(child_path)
            if entry is None:
                try:
                    entry = await self.stat(child_path)
                except NotFound:
                    continue
            children.append(entry)
        return children

    async def _fetch_listing(self, path: str) -> Listing:
        parent, children = await self._federation.listdir(path)
        if parent is not None:
            self._attrs[path] = parent
        for child in children:
            self._attrs[child.path] = child
            self._missing.pop(child.path, None)
        listing = Listing(tuple(child.name for child in children))
        self._listings[path] = listing
        return listing
