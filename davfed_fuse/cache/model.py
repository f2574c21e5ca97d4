"""The words every part of the block cache shares.

Owns: :class:`FileIdentity` (what the federation said about a file; blocks belong to
one), :data:`BlockKey`, the :data:`Fetcher` type, the cache's own errors, and the two
functions that name things on disk: :func:`url_hash` (a file's directory) and
:func:`block_checksum` (what the index stores per block).
Must not import: any other module of the cache, trio, pyfuse3, httpx (a pure module).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import xxhash

from davfed_fuse.buffers import Buffer

#: The layout version: the directory under a cache root that holds index and blocks.
FORMAT = "v1"

#: Maps ``(start, end_exclusive)`` of the remote file to exactly those bytes; raises on error.
#: The result is used in place (never copied), shared read-only with waiters.
Fetcher = Callable[[int, int], Awaitable[Buffer]]

#: ``(sha256(url) hex, block index)``: a block's name in memory, in the index and on disk.
BlockKey = tuple[str, int]

#: The block checksum the index stores (meta key ``checksum``): xxh3-64, cut to 63 bits
#: for sqlite's signed INTEGER. 1 was zlib.crc32, ten times slower (2 GB/s here).
CHECKSUM_ID = 2


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


def block_checksum(data: Buffer) -> int:
    """The checksum of a block's bytes, as the index stores it."""
    return xxhash.xxh3_64_intdigest(data) & 0x7FFF_FFFF_FFFF_FFFF


@functools.lru_cache(maxsize=4096)
def url_hash(url: str) -> str:
    """The name under which a URL's blocks are stored: hex sha256 of the URL."""
    return hashlib.sha256(url.encode()).hexdigest()
