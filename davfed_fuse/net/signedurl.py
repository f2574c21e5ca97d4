"""Pre-signed URLs: when they expire, and how to log them without their secrets.

Owns: reading the expiry that S3 (SigV2, SigV4) and Azure (SAS) put in a URL's
query, and redacting those queries. Pure functions; imports nothing of davfed's.

Dynafed signs replica URLs when it locates a file and caches them, so a URL
can arrive partly aged: its expiry must come from the URL, never from the
time it was received (dynafed-protocol.md §3).
"""

from __future__ import annotations

import calendar
import re
import time
from urllib.parse import parse_qsl, urlsplit

_AMZ_DATE = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$")
_ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d)(?::(\d\d))?)?Z?$")


def _timegm(fields: tuple[int, ...]) -> float | None:
    try:
        return float(calendar.timegm((*fields, 0, 0, 0)))
    except (OverflowError, ValueError):
        return None


def url_expiry(url: str) -> float | None:
    """The wall-clock time (epoch seconds) at which a pre-signed ``url`` expires.

    Understands SigV4 (``X-Amz-Date`` + ``X-Amz-Expires``), SigV2 (``Expires``)
    and Azure SAS (``se=``). Returns None for a URL that carries no expiry.
    """
    query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    amz_date, amz_expires = query.get("x-amz-date"), query.get("x-amz-expires")
    if amz_date is not None and amz_expires is not None:
        match = _AMZ_DATE.match(amz_date)
        if match and amz_expires.isdigit():
            start = _timegm(tuple(int(g) for g in match.groups()))
            if start is not None:
                return start + int(amz_expires)
    expires = query.get("expires")
    if expires is not None and expires.isdigit():
        return float(expires)
    se = query.get("se")
    if se is not None:
        match = _ISO.match(se)
        if match:
            return _timegm(tuple(int(g or 0) for g in match.groups()))
    return None


def renew_at(url: str, *, margin: float = 60.0, now: float | None = None) -> float | None:
    """When a client should stop using ``url`` and ask the federation again.

    ``margin`` seconds before expiry; a URL with less than ``2 * margin``
    seconds left is used for half of what is left (valid for 30 s: 15 s).
    """
    expiry = url_expiry(url)
    if expiry is None:
        return None
    now = time.time() if now is None else now
    remaining = expiry - now
    return now + max(0.0, remaining - margin, remaining / 2)
