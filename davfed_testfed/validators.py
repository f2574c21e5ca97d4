"""``ETag``/``Last-Modified`` and conditional requests as the S3 and Azure endpoints do them.

Owns: the validators a signed-URL endpoint sends with an object
(:func:`object_validators`) and what a conditional request gets instead of it
(:func:`check_conditions`: 304 or 412). Pure functions but a ``stat``; caches
(squid, XCache) are tested against the headers they meet on real S3.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path


def object_validators(source: Path) -> dict[str, str]:
    """``ETag`` and ``Last-Modified`` as S3 sends them for an object.

    S3's ETag of a single-part upload is the hex MD5 of the content, quoted.
    Hashing every object on every request would be slow, so this ETag is the MD5
    of the file's identity (inode, size, mtime): the same shape, and it changes
    whenever the content is replaced.
    """
    st = source.stat()
    identity = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return {
        "ETag": f'"{hashlib.md5(identity, usedforsecurity=False).hexdigest()}"',
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
    }


def check_conditions(headers: Mapping[str, str], validators: Mapping[str, str]) -> int | None:
    """The status S3 answers a conditional GET/HEAD with instead of the object, or None.

    ``If-Match``/``If-Unmodified-Since`` failing: 412; ``If-None-Match`` matching,
    or (without it) ``If-Modified-Since`` not older than the object: 304
    (RFC 9110 §13.2.2's order).
    """
    etag, modified = validators["ETag"], parsedate_to_datetime(validators["Last-Modified"])

    def matches(header: str) -> bool:
        tags = [t.strip().removeprefix("W/") for t in header.split(",")]
        return "*" in tags or etag in tags

    def since(header: str) -> datetime.datetime | None:
        try:
            return parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None  # an unreadable date is ignored, as S3 does

    if (value := headers.get("If-Match")) is not None:
        if not matches(value):
            return 412
    elif (value := headers.get("If-Unmodified-Since")) is not None:
        date = since(value)
        if date is not None and modified > date:
            return 412
    if (value := headers.get("If-None-Match")) is not None:
        return 304 if matches(value) else None
    if (value := headers.get("If-Modified-Since")) is not None:
        date = since(value)
        if date is not None and modified <= date:
            return 304
    return None
