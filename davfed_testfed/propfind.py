"""PROPFIND: parsing the request body and writing the lcgdm-dav ``207`` multistatus.

Owns: which properties exist and their text (the lcgdm-dav set: ``lcgdm:type``,
``resourcetype`` … ``owner``/``group``; octal ``mode``; etag
``<hex fileid>-<hex mtime>``; empty ``guid``/``sumtype``/``sumvalue``; owner and
group 0), the XML layout (namespaces ``D``, ``lcgdm``, ``lp1``, ``lp2``,
``lp3`` exactly as the captured DPM/lcgdm-dav sample), and the split of a
named-property request into a ``200`` and a ``404`` propstat. Pure functions.

Must not import: aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET

from davfed_testfed.namespace import Entry

DAV = "DAV:"
LCGDM = "LCGDM:"
APACHE = "http://apache.org/dav/props/"

PropName = tuple[str, str]  # (namespace URI, local name)

#: The output prefix of each namespace in a response (as lcgdm-dav writes them).
_PREFIX = {DAV: "lp1", LCGDM: "lp3"}

#: Every property, in the order lcgdm-dav writes them for ``allprop``.
ALL_PROPS: tuple[PropName, ...] = (
    (LCGDM, "type"),
    (DAV, "resourcetype"),
    (DAV, "creationdate"),
    (DAV, "getlastmodified"),
    (LCGDM, "lastaccessed"),
    (DAV, "getetag"),
    (DAV, "getcontentlength"),
    (DAV, "displayname"),
    (DAV, "iscollection"),
    (LCGDM, "guid"),
    (LCGDM, "mode"),
    (LCGDM, "sumtype"),
    (LCGDM, "sumvalue"),
    (LCGDM, "fileid"),
    (LCGDM, "status"),
    (LCGDM, "xattr"),
    (DAV, "owner"),
    (DAV, "group"),
)

RESPONSE_OPEN = (
    '<D:response xmlns:lcgdm="LCGDM:" xmlns:lp3="LCGDM:" xmlns:lp1="DAV:" '
    'xmlns:lp2="http://apache.org/dav/props/">'
)


@dataclass(frozen=True, slots=True)
class PropRequest:
    """What a PROPFIND body asks for: all properties, their names only, or a list."""

    props: tuple[PropName, ...] | None  # None: allprop
    names_only: bool = False


ALLPROP = PropRequest(None)


def parse_propfind(body: bytes) -> PropRequest:
    """Read a PROPFIND body (empty means ``allprop``).

    Raises:
        ValueError: the body is not a well-formed ``DAV:propfind`` document.
    """
    if not body.strip():
        return ALLPROP
    try:
        root = SafeET.fromstring(body)
    except Exception as exc:  # defusedxml raises ParseError and its own DefusedXmlException
        raise ValueError(f"malformed PROPFIND body: {exc}") from exc
    if root.tag != "{DAV:}propfind":
        raise ValueError(f"PROPFIND body root is {root.tag}, not DAV:propfind")
    for child in root:
        if child.tag == "{DAV:}allprop":
            return ALLPROP
        if child.tag == "{DAV:}propname":
            return PropRequest(None, names_only=True)
        if child.tag == "{DAV:}prop":
            names: list[PropName] = []
            for prop in child:
                tag = str(prop.tag)
                if tag.startswith("{"):
                    ns, local = tag[1:].split("}", 1)
                else:
                    ns, local = "", tag
                names.append((ns, local))
            return PropRequest(tuple(names))
    return ALLPROP


def etag(entry: Entry) -> str:
    """lcgdm-dav's etag: hex file id, dash, hex mtime (``ca36-536115eb``)."""
    return f"{entry.fileid:x}-{entry.mtime:x}"


def _iso8601(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def http_date(t: float) -> str:
    """RFC 1123 date, ``Wed, 30 Apr 2014 15:25:31 GMT``."""
    return formatdate(t, usegmt=True)


def prop_value(entry: Entry, display_name: str, prop: PropName) -> str | None:
    """The XML content of ``prop`` for ``entry``, or None if there is no such property."""
    values: dict[PropName, str] = {
        (LCGDM, "type"): "0",
        (DAV, "resourcetype"): "<D:collection/>" if entry.is_dir else "",
        (DAV, "creationdate"): _iso8601(entry.mtime),
        (DAV, "getlastmodified"): http_date(entry.mtime),
        (LCGDM, "lastaccessed"): http_date(entry.mtime),
        (DAV, "getetag"): etag(entry),
        (DAV, "getcontentlength"): str(entry.size),
        (DAV, "displayname"): escape(display_name),
        (DAV, "iscollection"): "1" if entry.is_dir else "0",
        (LCGDM, "guid"): "",
        (LCGDM, "mode"): f"0{entry.mode:o}",
        (LCGDM, "sumtype"): "",
        (LCGDM, "sumvalue"): "",
        (LCGDM, "fileid"): str(entry.fileid),
        (LCGDM, "status"): "-",
        (LCGDM, "xattr"): escape('{"type": 0}'),
        (DAV, "owner"): "0",
        (DAV, "group"): "0",
    }
    return values.get(prop)


def _element(prop: PropName, content: str) -> str:
    ns, local = prop
    prefix = "lcgdm" if prop == (LCGDM, "type") else _PREFIX[ns]
    if content == "":
        return f"<{prefix}:{local}/>"
    return f"<{prefix}:{local}>{content}</{prefix}:{local}>"


def _missing_element(prop: PropName, index: int) -> str:
    ns, local = prop
    if ns == DAV:
        return f"<D:{local}/>"
    if not ns:
        return f"<{local}/>"
    return f'<g{index}:{local} xmlns:g{index}="{escape(ns, {chr(34): "&quot;"})}"/>'


def _propstat(body: str, status: str) -> str:
    return (
        f"<D:propstat>\n<D:prop>\n{body}</D:prop>\n<D:status>{status}</D:status>\n</D:propstat>\n"
    )


def response_xml(href: str, entry: Entry, display_name: str, request: PropRequest) -> str:
    """One ``D:response`` element for ``entry`` at (already encoded) ``href``."""
    parts = [RESPONSE_OPEN, "\n", f"<D:href>{escape(href)}</D:href>\n"]
    if request.props is None:
        if request.names_only:
            found = "".join(_element(p, "") for p in ALL_PROPS)
        else:
            found = "".join(
                _element(p, prop_value(entry, display_name, p) or "") for p in ALL_PROPS
            )
        parts.append(_propstat(found, "HTTP/1.1 200 OK"))
    else:
        found_parts: list[str] = []
        missing_parts: list[str] = []
        for i, prop in enumerate(request.props):
            value = prop_value(entry, display_name, prop)
            if value is None:
                missing_parts.append(_missing_element(prop, i))
            else:
                found_parts.append(_element(prop, value))
        if found_parts:
            parts.append(_propstat("".join(found_parts), "HTTP/1.1 200 OK"))
        if missing_parts:
            parts.append(_propstat("".join(missing_parts), "HTTP/1.1 404 Not Found"))
    parts.append("</D:response>\n")
    return "".join(parts)


def multistatus(items: Sequence[tuple[str, Entry, str]], request: PropRequest) -> bytes:
    """The whole ``207`` body for ``(href, entry, display name)`` items, in order."""
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">\n']
    out.extend(response_xml(href, entry, name, request) for href, entry, name in items)
    out.append("</D:multistatus>\n")
    return "".join(out).encode()
