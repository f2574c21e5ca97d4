"""Checking a file assembled from several replicas against the federation's whole-file checksum.

Owns: :func:`adler32_combine` (zlib's: the adler32 of two pieces from theirs),
:class:`Assembly` (the adler32 of each piece fetched, and the file's once they
cover it) and :func:`parse_adler32` (the ``adler32`` of an RFC 3230 ``Digest``
header, as Dynafed's checksum endpoints send it).
Must not import: httpx, trio, pyfuse3, the cache. Pure functions and bookkeeping.

Pieces are checksummed as they arrive, in any order, and never kept: the file's
checksum is combined from the pieces' once they cover it (davix's checksum of a
whole file is adler32, and so is Dynafed's; dynafed-protocol.md "Checksums").
"""

from __future__ import annotations

import zlib

from davfed_fuse.buffers import Buffer

_BASE = 65521


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The adler32 of ``A + B`` from ``adler32(A)``, ``adler32(B)`` and ``len(B)`` (zlib)."""
    rem = len2 % _BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _BASE
    sum1 += (adler2 & 0xFFFF) + _BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _BASE - rem
    if sum1 >= _BASE:
        sum1 -= _BASE
    if sum1 >= _BASE:
        sum1 -= _BASE
    if sum2 >= _BASE << 1:
        sum2 -= _BASE << 1
    if sum2 >= _BASE:
        sum2 -= _BASE
    return sum1 | (sum2 << 16)


def parse_adler32(header: str) -> str | None:
    """The adler32 of a ``Digest`` header (``adler32=0a1b2c3d, md5=...``) as 8 lowercase hex
    digits, or None if it has none."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "adler32" and value.strip():
            text = value.strip().lower()
            try:
                return f"{int(text, 16):08x}"
            except ValueError:
                return None
    return None


class Assembly:
    """The pieces of one file fetched so far, with the replica each came from."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pieces: dict[int, tuple[int, int]] = {}  # start -> (length, adler32)
        self.sources: set[str] = set()

    def add(self, start: int, data: Buffer, source: str) -> None:
        """Bytes ``data`` at ``start`` arrived from ``source`` (an endpoint's origin)."""
        self._pieces[start] = (len(data), zlib.adler32(data))
        self.sources.add(source)

    def clear(self) -> None:
        self._pieces.clear()
        self.sources.clear()

    def checksum(self) -> str | None:
        """The file's adler32 (8 hex digits) once the pieces cover it exactly, else None."""
        pos, value = 0, 1  # adler32 of no bytes
        for start in sorted(self._pieces):
            length, adler = self._pieces[start]
            if start != pos:
                if start < pos:  # a piece fetched again over another: not a cover
                    continue
                return None
            value = adler32_combine(value, adler, length)
            pos += length
        return f"{value:08x}" if pos == self.size else None
