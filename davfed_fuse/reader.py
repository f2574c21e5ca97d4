"""Readers that serve one open file's bytes.

Owns: :class:`DirectReader`, which reads straight from the federation with
one ranged GET per request (no cache). The block cache's reader takes its
place when a cache is configured.
"""

from __future__ import annotations

from davfed_fuse.fuse_ops import Data, Reader
from davfed_fuse.remote import Federation
from davfed_fuse.webdav import RemoteEntry


class DirectReader(Reader):
    """One ranged GET per read, through the file's remembered redirect target."""

    def __init__(self, federation: Federation, entry: RemoteEntry) -> None:
        self._federation = federation
        self._entry = entry

    async def read(self, offset: int, size: int) -> Data:
        entry = self._entry
        return await self._federation.read(entry.path, offset, offset + size, entry.size)
