"""``Range`` headers as the signed-URL endpoints (S3, Azure) interpret them.

Owns: turning a ``Range`` header and a file size into what to send: the whole
body (no header, a header S3 ignores, or several ranges, which S3 answers with
``200`` and the full object), one byte range (``206``) or nothing (``416``).
Pure functions; the endpoints in ``storage.py`` do the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Whole:
    """Send the whole object with ``200``."""


@dataclass(frozen=True, slots=True)
class Span:
    """Send bytes ``start..end`` (inclusive) with ``206``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer ``416`` with ``Content-Range: bytes */size``."""


RangeDecision = Whole | Span | Unsatisfiable

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def decide_range(header: str | None, size: int) -> RangeDecision:
    """What an S3 endpoint sends for ``Range: header`` on an object of ``size`` bytes."""
    if header is None or "," in header:
        return Whole()
    match = _SINGLE.match(header)
    if match is None:
        return Whole()  # S3 ignores a Range header it cannot parse
    first, last = match.groups()
    if first == "" and last == "":
        return Whole()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return Unsatisfiable()
        return Span(max(0, size - suffix), size - 1)
    start = int(first)
    if last != "" and int(last) < start:
        return Whole()  # syntactically invalid: ignored
    if start >= size:
        return Unsatisfiable()
    end = size - 1 if last == "" else min(int(last), size - 1)
    return Span(start, end)
