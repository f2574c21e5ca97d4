"""Block arithmetic: pure functions from byte offsets to fixed-size block indices and back.

Owns: how a file of ``size`` bytes is cut into blocks of ``block_size`` bytes, which
blocks a read touches, the byte range of a block or a run of blocks, the ``Range``
header for a run, and the grouping of missing blocks into runs.
Must not import: anything but the standard library. No I/O, no clock, no state.

Conventions: block ``i`` covers bytes ``[i * block_size, min((i + 1) * block_size, size))``;
the last block of a file may be short; a file of size 0 has no blocks. Byte ranges are
half-open ``(start, end_exclusive)``; the HTTP ``Range`` header is inclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockSpan:
    """The blocks a read touches, and where the read starts and ends inside them.

    ``first_offset`` is the offset of the read inside block ``first``; ``last_end`` is the
    exclusive end of the read inside block ``last``.
    """

    first: int
    last: int
    first_offset: int
    last_end: int

    def slice_in(self, index: int, block_size: int) -> tuple[int, int]:
        """The ``(lo, hi)`` byte range of the read inside block ``index`` (first..last)."""
        lo = self.first_offset if index == self.first else 0
        hi = self.last_end if index == self.last else block_size
        return lo, hi


def block_count(size: int, block_size: int) -> int:
    """Number of blocks of a file of ``size`` bytes."""
    _check(size >= 0 and block_size > 0, "size must be >= 0 and block_size > 0")
    return -(-size // block_size)


def clip(offset: int, length: int, size: int) -> tuple[int, int]:
    """Clip the read ``(offset, length)`` to a file of ``size`` bytes: ``(start, end_exclusive)``.

    A read at or past EOF, or of length 0, gives an empty range ``(start, start)``.
    """
    _check(offset >= 0 and length >= 0 and size >= 0, "offset, length, size must be >= 0")
    start = min(offset, size)
    return start, min(offset + length, size)


def span(offset: int, length: int, size: int, block_size: int) -> BlockSpan | None:
    """The blocks touched by reading ``length`` bytes at ``offset`` of a ``size``-byte file.

    Returns None if the clipped read is empty (EOF or length 0).
    """
    _check(block_size > 0, "block_size must be > 0")
    start, end = clip(offset, length, size)
    if start >= end:
        return None
    first, first_offset = divmod(start, block_size)
    last = (end - 1) // block_size
    return BlockSpan(first, last, first_offset, end - last * block_size)


def block_length(index: int, size: int, block_size: int) -> int:
    """Length in bytes of block ``index`` (the last block may be short)."""
    start, end = block_range(index, index, size, block_size)
    return end - start


def block_range(first: int, last: int, size: int, block_size: int) -> tuple[int, int]:
    """Byte range ``(start, end_exclusive)`` of blocks ``first..last`` (inclusive) of the file.

    Raises ValueError if a block lies outside the file.
    """
    n = block_count(size, block_size)
    _check(0 <= first <= last < n, f"blocks {first}..{last} outside a file of {n} blocks")
    return first * block_size, min((last + 1) * block_size, size)


def range_header(first: int, last: int, size: int, block_size: int) -> str:
    """HTTP ``Range`` header value for blocks ``first..last``, e.g. ``bytes=0-4194303``."""
    start, end = block_range(first, last, size, block_size)
    return f"bytes={start}-{end - 1}"


def runs(indices: Iterable[int], max_run: int | None = None) -> Iterator[tuple[int, int]]:
    """Group sorted, distinct block indices into runs ``(first, last)`` of adjacent blocks.

    A run holds at most ``max_run`` blocks (None: unlimited). ``[1, 2, 3, 7]`` gives
    ``(1, 3), (7, 7)``. Raises ValueError if ``indices`` is not strictly increasing.
    """
    _check(max_run is None or max_run > 0, "max_run must be > 0")
    first = prev = -1
    for i in indices:
        _check(i > prev, "indices must be strictly increasing")
        if prev >= 0 and i == prev + 1 and (max_run is None or i - first < max_run):
            prev = i
            continue
        if prev >= 0:
            yield first, prev
        first = prev = i
    if prev >= 0:
        yield first, prev


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
