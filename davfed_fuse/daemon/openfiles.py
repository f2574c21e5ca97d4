"""Readers that serve one open file's bytes.

Owns: the two ways a read reaches the federation. :class:`CachedReader` (the
default) serves reads from the block cache with sequential read-ahead;
:class:`DirectReader` reads straight from the federation with one ranged GET
per request (``cache_size=0``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import trio

from davfed_fuse.buffers import Buffer
from davfed_fuse.cache.blockcache import BlockCache, FileIdentity
from davfed_fuse.daemon.filereader import FileReader, ReadaheadPolicy
from davfed_fuse.daemon.handlers import Data, Reader
from davfed_fuse.net.federation import Federation, Lane
from davfed_fuse.net.webdav import RemoteEntry, url_for


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


class DirectReader(Reader):
    """One ranged GET per read, through the file's remembered redirect target."""

    def __init__(self, federation: Federation, entry: RemoteEntry) -> None:
        self._federation = federation
        self._entry = entry

    async def read(self, offset: int, size: int) -> Data:
        entry = self._entry
        return await self._federation.read(entry.path, offset, offset + size, entry.size)


class CachedReader(Reader):
    """Reads through the block cache; sequential reads grow a read-ahead window."""

    def __init__(
        self,
        federation: Federation,
        entry: RemoteEntry,
        cache: BlockCache,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        readahead: int,
    ) -> None:
        async def fetch(start: int, end: int) -> Buffer:
            return await federation.read(entry.path, start, end, entry.size)

        async def fetch_ahead(start: int, end: int) -> Buffer:
            return await federation.read(entry.path, start, end, entry.size, lane=Lane.BACKGROUND)

        policy = ReadaheadPolicy(entry.size, cache.block_size, max_bytes=readahead)
        ident = identity(federation, entry)
        self._reader = FileReader(
            cache, ident, fetch, nursery, limiter, policy=policy, fetch_ahead=fetch_ahead
        )

    async def read(self, offset: int, size: int) -> Data:
        return await self._reader.read(offset, size)

    async def close(self) -> None:
        self._reader.close()
