"""Memory that bytes arrive in: the one buffer type and the one allocator.

Owns: ``Buffer`` (what a read returns and a block holds) and :func:`new_buffer`,
whose large buffers are page-aligned anonymous maps, reused once nothing refers to
them (:class:`MapPool`). The cache writes those with ``O_DIRECT``, which needs
page-aligned memory: :func:`is_page_aligned` says whether a buffer qualifies, so
that promise is checked, not assumed.
Must not import: anything of davfed (a pure module).
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

#: Bytes as they travel from the network to a reader and into the cache.
Buffer = bytes | bytearray | memoryview

#: Buffers from this size up are anonymous maps (page-aligned, zero pages
#: faulted in by the thread that fills them); smaller ones are bytearrays.
MMAP_MIN = 1 << 20
PAGE = mmap.PAGESIZE
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


#: Bytes of free maps :data:`POOL` keeps for reuse (maps still in use are not counted:
#: they are memory anyway).
POOL_FREE_BYTES = 64 << 20
#: Maps :data:`POOL` follows at most (free or in use).
POOL_MAPS = 256


class MapPool:
    """Anonymous maps handed out by :func:`new_buffer`, reused once free.

    A fresh map costs its pages' faults and the kernel clearing them: measured with
    ``perf`` on a cold read, ``clear_page`` was 11 % of the daemon's CPU (about 0.18 s
    per GiB), more than the copy out of the socket. A map is *free* when nothing but
    this pool refers to it: every memoryview of it (the fetch's, a block's, a
    reader's slice, a transfer thread still writing) holds a reference to the map
    object, so CPython's reference count says when the last one is gone. A reused
    map's old bytes are never seen: a fetch returns its buffer only once every byte
    of it was written (or raises). Keeps up to ``free_bytes`` of free maps; the
    rest go back to the system when released, as before.
    """

    def __init__(self, free_bytes: int = POOL_FREE_BYTES, max_maps: int = POOL_MAPS) -> None:
        self.free_bytes = free_bytes
        self.max_maps = max_maps
        self._maps: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.reused = 0

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            maps = self._maps
            free: list[int] = []
            for i in range(len(maps)):
                candidate = maps[i]
                # 3: the list, ``candidate``, getrefcount's argument (not enumerate():
                # its reused tuple would hold one more).
                if sys.getrefcount(candidate) <= 3:
                    if len(candidate) == size:
                        maps.append(maps.pop(i))  # most recently used last
                        self.reused += 1
                        return candidate
                    free.append(i)
            # Forget the least recently used free maps over the budget (unmapped now),
            # and the oldest maps past the count (unmapped once their views are gone).
            spare = sum(len(maps[i]) for i in free)
            drop = set()
            for i in free:
                if spare <= self.free_bytes - size:
                    break
                spare -= len(maps[i])
                drop.add(i)
            self._maps = maps = [m for i, m in enumerate(maps) if i not in drop]
            del maps[: max(0, len(maps) + 1 - self.max_maps)]
            buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            if _HUGEPAGE is not None:
                buffer.madvise(_HUGEPAGE)  # 2 MiB pages where allowed: 512x fewer faults
            maps.append(buffer)
            return buffer

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()


POOL = MapPool()


def new_buffer(size: int) -> bytearray | memoryview:
    """A writable buffer of ``size`` bytes for data to arrive in (its old content is
    undefined: the caller writes all of it before anyone reads it).

    Large ones are anonymous memory maps from :data:`POOL`: page-aligned (see
    :func:`is_page_aligned`), reused when a map of that size is free, else new (their
    pages faulted in by the worker thread that fills them, so the event loop does not
    spend time clearing megabytes).
    """
    if size < MMAP_MIN:
        return bytearray(size)
    return memoryview(POOL.take(size))


def address_of(data: Buffer) -> int | None:
    """The address of ``data``'s first byte, or None for read-only or empty memory."""
    view = memoryview(data)
    if view.readonly or not view.nbytes or not view.c_contiguous:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def is_page_aligned(data: Buffer) -> bool:
    """Whether ``data`` starts on a page boundary and is whole pages long (``O_DIRECT``'s rule)."""
    address = address_of(data)
    return address is not None and address % PAGE == 0 and len(data) % PAGE == 0
