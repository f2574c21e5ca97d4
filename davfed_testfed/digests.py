"""Instance digests (RFC 3230) as a ``candochecksum`` storage endpoint computes them.

Owns: parsing ``Want-Digest`` (:func:`choose_algorithm`), computing a file's
``adler32`` (8 lowercase hex digits, as DPM/dCache/EOS write it) or ``md5``
(base64 of the 16 bytes, RFC 3230) over the whole file (:func:`file_digest`,
cached by inode, size and mtime so a big file is read once), the ``Digest``
header value (:func:`digest_header`), and the deliberately wrong value a
``digest`` fault makes an endpoint report (:func:`corrupt`).

Must not import: aiohttp.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import zlib
from pathlib import Path

#: What the endpoints compute, in the order preferred when the client has no preference.
ALGORITHMS = ("adler32", "md5")
_CHUNK = 1 << 20

_cache: dict[tuple[str, str, int, int, int], str] = {}
_lock = threading.Lock()


def choose_algorithm(want_digest: str) -> str | None:
    """The algorithm to answer ``Want-Digest`` with (RFC 3230 §4.3.1), or None.

    ``"adler32"``, ``"MD5, adler32;q=0.5"``: the supported algorithm with the highest
    q-value (ties: the client's order); ``q=0`` means "not this one". Names are
    case-insensitive.
    """
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(want_digest.split(",")):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name not in ALGORITHMS or quality <= 0:
            continue
        rank = (quality, -position, name)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return None if best is None else best[2]


def compute(path: Path, algorithm: str) -> str:
    """The digest of the whole file at ``path`` in its ``Digest`` header encoding."""
    if algorithm == "adler32":
        value = 1
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                value = zlib.adler32(chunk, value)
        return f"{value & 0xFFFFFFFF:08x}"
    if algorithm == "md5":
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
        return base64.b64encode(md5.digest()).decode("ascii")
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def file_digest(path: Path, algorithm: str) -> str:
    """:func:`compute`, cached while the file's inode, size and mtime stay the same."""
    st = os.stat(path)
    key = (str(path), algorithm, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    value = compute(path, algorithm)
    with _lock:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = value
    return value


def corrupt(value: str, algorithm: str) -> str:
    """A wrong digest of the same shape (what a ``digest`` fault reports)."""
    if algorithm == "adler32":
        return f"{int(value, 16) ^ 0x5A5A5A5A:08x}"
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 0xFF
    return base64.b64encode(bytes(raw)).decode("ascii")


def digest_header(algorithm: str, value: str) -> str:
    """``adler32=0a1b2c3d`` / ``md5=<base64>``."""
    return f"{algorithm}={value}"
