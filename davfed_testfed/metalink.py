"""Metalink documents listing a file's replicas, in redirect order.

Owns: the v3 document in the exact shape lcgdm-dav writes (``generator="lcgdm-dav"``,
``xmlns:lcgdm="LCGDM:"``, ``files/file/resources/url``) and an RFC 5854 (v4)
document for clients that ask for ``application/metalink4+xml``. Pure functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from davfed_testfed.propfind import http_date

V3_TYPE = "application/metalink+xml"
V4_TYPE = "application/metalink4+xml"


def wants_v4(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for Metalink 4."""
    return accept is not None and "metalink4" in accept


def metalink_v3(name: str, size: int, urls: Sequence[str], now: float) -> bytes:
    """lcgdm-dav's v3 metalink; ``name`` is the file's path on the federation."""
    resources = "\n".join(f'   <url type="{urlsplit(u).scheme}">{escape(u)}</url>' for u in urls)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<metalink version="3.0" xmlns="http://www.metalinker.org/" xmlns:lcgdm="LCGDM:" '
        f'generator="lcgdm-dav" pubdate="{http_date(now)}">\n'
        f" <files><file name={quoteattr(name)}><size>{size}</size>\n"
        f"  <resources>\n{resources}\n  </resources>\n"
        " </file></files></metalink>\n"
    ).encode()


def metalink_v4(name: str, size: int, urls: Sequence[str], now: float) -> bytes:
    """RFC 5854 metalink; ``url priority`` counts from 1 in try order."""
    rel_name = name.strip("/")
    entries = "\n".join(
        f'  <url priority="{i}">{escape(u)}</url>' for i, u in enumerate(urls, start=1)
    )
    published = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">\n'
        " <generator>davfed-testfed</generator>\n"
        f" <published>{escape(published)}</published>\n"
        f" <file name={quoteattr(rel_name)}>\n"
        f"  <size>{size}</size>\n{entries}\n"
        " </file>\n"
        "</metalink>\n"
    ).encode()
