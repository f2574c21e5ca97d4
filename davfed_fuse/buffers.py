"""Memory that bytes arrive in: the one buffer type and the one allocator.

Owns: ``Buffer`` (what a read returns and a block holds) and :func:`new_buffer`,
whose large buffers are page-aligned anonymous maps. The cache writes those with
``O_DIRECT``, which needs page-aligned memory: :func:`is_page_aligned` says
whether a buffer qualifies, so that promise is checked, not assumed.
Must not import: anything of davfed (a pure module).
"""

from __future__ import annotations

import ctypes
import mmap

#: Bytes as they travel from the network to a reader and into the cache.
Buffer = bytes | bytearray | memoryview

#: Buffers from this size up are anonymous maps (page-aligned, zero pages
#: faulted in by the thread that fills them); smaller ones are bytearrays.
MMAP_MIN = 1 << 20
PAGE = mmap.PAGESIZE
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def new_buffer(size: int) -> bytearray | memoryview:
    """A writable buffer of ``size`` bytes for data to arrive in.

    Large ones are anonymous memory maps: their pages are zero until written and are
    faulted in by the worker thread that fills them, so the event loop does not
    spend time clearing megabytes; they go back to the system as soon as released.
    They start on a page boundary (see :func:`is_page_aligned`).
    """
    if size < MMAP_MIN:
        return bytearray(size)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    if _HUGEPAGE is not None:
        buffer.madvise(_HUGEPAGE)  # 2 MiB pages where the system allows: 512x fewer faults
    return memoryview(buffer)


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
