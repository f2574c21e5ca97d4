"""Open files and the readers that serve their bytes.

Owns: what the handlers keep per open file (:class:`OpenFile`), what they need
from a reader (:class:`Reader`), and the two ways a read reaches the federation.
:class:`CachedReader` (the default) serves reads from the block cache with
sequential read-ahead; :class:`DirectReader` reads straight from the federation
with one ranged GET per request (``cache_size=0``). :class:`Readers` makes
either kind and counts those still alive.
Must not import: pyfuse3 or the handlers (they import this module).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import trio

from davfed_fuse.buffers import Buffer
from davfed_fuse.cache.blockcache import BlockCache, FileIdentity
from davfed_fuse.daemon.filereader import FileReader, ReadaheadPolicy
from davfed_fuse.net.federation import Federation, Lane
from davfed_fuse.net.replicachoice import ReplicaChoice
from davfed_fuse.net.webdav import RemoteEntry, url_for


class Reader(Protocol):
    """What the handlers need from whatever serves one open file's bytes."""

    async def read(self, offset: int, size: int) -> Buffer:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file)."""
        ...

    async def close(self) -> None:
        """The file was released: stop background work for it."""
        ...


ReaderFactory = Callable[[RemoteEntry], Reader]


@dataclass(slots=True)
class OpenFile:
    """One open file handle: its inode, what it was opened as, and its reader."""

    inode: int
    entry: RemoteEntry
    reader: Reader


def cache_root(cache_dir: Path, url: str) -> Path:
    """The cache directory of one federation URL: ``<cache_dir>/<host>-<hash>``.

    Mounts of different federations never share a cache, and a mount finds
    its blocks again after a restart.
    """
    host = urlsplit(url).hostname or "federation"
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return cache_dir / f"{host}-{digest}"


def identity(federation: Federation, entry: RemoteEntry) -> FileIdentity:
    """What the cache keys a file's blocks by: its URL and what the federation says of it."""
    return FileIdentity(
        url=url_for(federation.base_url, entry.path),
        size=entry.size,
        etag=entry.etag,
        mtime_ns=entry.mtime_ns,
    )


class DirectReader:
    """One ranged GET per read, through the file's remembered redirect target."""

    def __init__(self, federation: Federation, entry: RemoteEntry) -> None:
        self._federation = federation
        self._entry = entry

    async def read(self, offset: int, size: int) -> Buffer:
        entry = self._entry
        return await self._federation.read(entry.path, offset, offset + size, entry.size)

    async def close(self) -> None:
        return None


class CachedReader:
    """Reads through the block cache; sequential reads grow a read-ahead window."""

    def __init__(
        self,
        federation: Federation,
        entry: RemoteEntry,
        cache: BlockCache,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        readahead: int,
        choice: ReplicaChoice | None = None,
    ) -> None:
        async def fetch(start: int, end: int) -> Buffer:
            return await federation.read(entry.path, start, end, entry.size)

        async def fetch_ahead(start: int, end: int) -> Buffer:
            return await federation.read(entry.path, start, end, entry.size, lane=Lane.BACKGROUND)

        policy = ReadaheadPolicy(entry.size, cache.block_size, max_bytes=readahead)
        ident = identity(federation, entry)
        if choice is not None:  # bulk transfers choose among the replicas
            source = choice.source(entry, lambda: policy.streaming, lambda: cache.drop_file(ident))
            fetch_ahead = source.fetch

            async def fetch(start: int, end: int) -> Buffer:
                data = await federation.read(entry.path, start, end, entry.size)
                await source.witness(start, data)  # a spread file is checked whole
                return data

        self._reader = FileReader(
            cache, ident, fetch, nursery, limiter, policy=policy, fetch_ahead=fetch_ahead
        )

    async def read(self, offset: int, size: int) -> Buffer:
        return await self._reader.read(offset, size)

    async def close(self) -> None:
        self._reader.close()


class Readers:
    """Makes the reader of each opened file: cached, or direct when there is no cache.

    ``nursery`` owns the read-ahead tasks and ``limiter`` bounds their fetches
    (both shared by every reader of the mount). :meth:`alive` counts the readers
    not yet freed: open ones, and closed ones whose last fetch is still running.
    """

    def __init__(
        self,
        federation: Federation,
        cache: BlockCache | None,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        readahead: int,
        choice: ReplicaChoice | None = None,
    ) -> None:
        self._federation = federation
        self._choice = choice
        self._cache = cache
        self._nursery = nursery
        self._limiter = limiter
        self._readahead = readahead
        self._alive: weakref.WeakSet[Reader] = weakref.WeakSet()

    def __call__(self, entry: RemoteEntry) -> Reader:
        reader: Reader
        if self._cache is None:
            reader = DirectReader(self._federation, entry)
        else:
            reader = CachedReader(
                self._federation,
                entry,
                self._cache,
                self._nursery,
                self._limiter,
                self._readahead,
                self._choice,
            )
        self._alive.add(reader)
        return reader

    def alive(self) -> int:
        return len(self._alive)
