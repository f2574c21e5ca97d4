"""Free space on the cache's filesystem: the reserve the cache never eats into.

Owns: how much of its filesystem the cache leaves free (``cache_min_free=``: a
percentage of the filesystem's size or a number of bytes, whichever is larger), how
many more bytes it may write now without going below that (:meth:`FreeSpace.room`),
and the mount-time check that ``cache_size`` can be had at all (:meth:`FreeSpace.shortfall`).
Eviction itself is the façade's (``BlockCache._make_room``).
Must not import: anything of davfed's (pure ``os`` calls; ``statvfs`` is injectable).
"""

from __future__ import annotations

import os
from collections.abc import Callable

StatVfs = Callable[[str], os.statvfs_result]


class FreeSpace:
    """The free space of the filesystem holding ``path``, less the reserve."""

    def __init__(
        self,
        path: str,
        *,
        min_bytes: int = 0,
        min_percent: float = 0.0,
        statvfs: StatVfs = os.statvfs,
    ) -> None:
        self.path = path
        self._statvfs = statvfs
        st = statvfs(path)
        size = st.f_blocks * st.f_frsize
        self.reserve = max(min_bytes, int(size * min_percent / 100))

    def free(self) -> int:
        """Bytes an unprivileged writer can still write to the filesystem now."""
        st = self._statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def room(self) -> int:
        """How many more bytes may be written before free space falls below the reserve
        (negative: it is below already, by that much)."""
        return self.free() - self.reserve

    def shortfall(self, max_bytes: int, held: int) -> int:
        """By how much a cache capped at ``max_bytes`` that holds ``held`` bytes cannot
        reach its cap (0 if it can): the space it has is what it holds plus the room."""
        return max(0, max_bytes - (held + self.room()))
