"""WebDAV on the wire: PROPFIND request bodies in, :class:`RemoteEntry` values out.

Owns: the XML of PROPFIND (what davfed asks for, how a multistatus answer is
read), path <-> URL encoding, and the checks that turn hostile or malformed
answers into :class:`~davfed_fuse.errors.BadResponse`.
Must not import: httpx, trio, pyfuse3. Everything here is a pure function.
"""

from __future__ import annotations

import calendar
import email.utils
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from davfed_fuse.errors import BadResponse

#: The props davfed asks for (the same set davix asks a Dynafed for).
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop>'
    b"<D:getlastmodified/><D:creationdate/><D:getcontentlength/><D:getetag/>"
    b"<D:resourcetype/><L:mode/>"
    b"</D:prop></D:propfind>\n"
)

#: A multistatus larger than this is refused (a 10000-entry listing is ~15 MB).
MAX_MULTISTATUS_BYTES = 64 << 20
#: Sizes beyond this are not believed (1 PiB).
MAX_FILE_SIZE = 1 << 50
#: Dates outside [1970, 2200) are replaced by the epoch.
MAX_MTIME = 7258118400

#: What davfed accepts for a metalink (v4 first; lcgdm-dav also answers v3).
METALINK_ACCEPT = "application/metalink4+xml, application/metalink+xml;q=0.9"
#: A metalink larger than this is refused.
MAX_METALINK_BYTES = 1 << 20

_DAV = "{DAV:}"
_LCGDM = "{LCGDM:}"


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """What the federation says about one name.

    ``path`` is the decoded path relative to the mount root, ``/``-separated,
    without a leading or trailing slash (``""`` is the root).
    """

    path: str
    is_dir: bool
    size: int
    mtime_ns: int
    etag: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def quote_path(path: str) -> str:
    """Percent-encode a decoded mount-relative path for use in a URL path."""
    return quote(path, safe="/-_.~!$&'()*+,;=:@")


def url_for(base_url: str, path: str, *, is_dir: bool = False) -> str:
    """The URL of ``path`` (mount-relative, decoded) under the federation root ``base_url``."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    url = base + quote_path(path)
    if is_dir and path and not url.endswith("/"):
        url += "/"
    return url


def parse_http_date(value: str) -> int:
    """RFC 1123 date -> ns since the epoch; absurd or unreadable dates give 0."""
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError):
        return 0
    if parsed is None:
        return 0
    try:
        seconds = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    except (OverflowError, ValueError):
        return 0
    if not 0 <= seconds < MAX_MTIME:
        return 0
    return seconds * 1_000_000_000


_ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:?\d\d)?$")


def parse_iso_date(value: str) -> int:
    """ISO 8601 (``creationdate``) -> ns since the epoch; 0 when unreadable."""
    match = _ISO.match(value.strip())
    if not match:
        return 0
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (OverflowError, ValueError):
        return 0
    zone = match.group(7)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    if not 0 <= seconds < MAX_MTIME:
        return 0
    return seconds * 1_000_000_000


def _decoded_segments(url_path: str, what: str) -> list[str]:
    segments = []
    for raw in url_path.split("/"):
        if not raw:
            continue
        try:
            name = unquote(raw, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadResponse(f"{what} {url_path!r} is not UTF-8") from exc
        if name in (".", "..") or "/" in name or "\0" in name:
            raise BadResponse(f"{what} {url_path!r} holds an invalid name {name!r}")
        segments.append(name)
    return segments


def href_to_path(href: str, root_path: str) -> str:
    """Map an ``href`` of a multistatus to a decoded path relative to ``root_path``.

    ``root_path`` is the URL path of the mount root (percent-encoded, as in the
    federation URL). Raises :class:`BadResponse` for an href outside the root or
    whose decoded names hold NUL, ``/``, or are ``.``/``..``.
    """
    href_path = urlsplit(href).path
    root = _decoded_segments(root_path, "root path")
    segments = _decoded_segments(href_path, "href")
    if segments[: len(root)] != root:
        raise BadResponse(f"href {href!r} is outside the mount root {root_path!r}")
    return "/".join(segments[len(root) :])


def _text(prop: ET.Element, tag: str) -> str | None:
    element = prop.find(tag)
    if element is None:
        return None
    return (element.text or "").strip()


def _entry_from_response(response: ET.Element, root_path: str) -> RemoteEntry | None:
    href = _text(response, f"{_DAV}href")
    if href is None:
        raise BadResponse("multistatus response without href")
    path = href_to_path(href, root_path)
    found: ET.Element | None = None
    for propstat in response.findall(f"{_DAV}propstat"):
        status = _text(propstat, f"{_DAV}status") or ""
        if " 200 " in f"{status} ":
            found = propstat.find(f"{_DAV}prop")
            break
    if found is None:
        # Dynafed skips children without stat info; so do we.
        return None
    resourcetype = found.find(f"{_DAV}resourcetype")
    is_dir = resourcetype is not None and resourcetype.find(f"{_DAV}collection") is not None
    length_text = _text(found, f"{_DAV}getcontentlength")
    size = 0
    if not is_dir and length_text:
        try:
            size = int(length_text)
        except ValueError as exc:
            raise BadResponse(f"{href}: getcontentlength {length_text!r} is not a number") from exc
        if not 0 <= size <= MAX_FILE_SIZE:
            raise BadResponse(f"{href}: getcontentlength {size} is not a plausible size")
    mtime_ns = parse_http_date(_text(found, f"{_DAV}getlastmodified") or "")
    if mtime_ns == 0:
        mtime_ns = parse_iso_date(_text(found, f"{_DAV}creationdate") or "")
    etag = _text(found, f"{_DAV}getetag") or ""
    return RemoteEntry(path=path, is_dir=is_dir, size=size, mtime_ns=mtime_ns, etag=etag)


def parse_xml(body: bytes, limit: int, what: str) -> ET.Element:
    """Parse XML from a server with a hardened parser: no DTDs or entities, ``limit`` bytes."""
    if len(body) > limit:
        raise BadResponse(f"{what} of {len(body)} bytes is too large")
    try:
        root: ET.Element = DET.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadResponse(f"malformed {what}: {exc}") from exc
    return root


def parse_multistatus(body: bytes, root_path: str) -> list[RemoteEntry]:
    """Parse a ``207 Multi-Status`` body into entries, in document order.

    Entries whose propstat is not 200 are skipped (Dynafed lists children it
    could not stat that way). Raises :class:`BadResponse` on malformed or
    hostile XML (DTDs, entities, oversized documents, wrong types).
    """
    root = parse_xml(body, MAX_MULTISTATUS_BYTES, "PROPFIND answer")
    if root.tag != f"{_DAV}multistatus":
        raise BadResponse(f"PROPFIND answer is a {root.tag!r}, not a DAV multistatus")
    entries = []
    for response in root.findall(f"{_DAV}response"):
        entry = _entry_from_response(response, root_path)
        if entry is not None:
            entries.append(entry)
    return entries


def split_listing(
    entries: list[RemoteEntry], dir_path: str
) -> tuple[RemoteEntry | None, list[RemoteEntry]]:
    """Split a Depth 1 answer for ``dir_path`` into (the directory itself, its children).

    Children that are not direct children of ``dir_path`` are dropped, and a
    name listed twice is kept once (the first time).
    """
    parent: RemoteEntry | None = None
    children: list[RemoteEntry] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.path == dir_path:
            parent = entry
        elif posixpath.dirname(entry.path) == dir_path and entry.name not in seen:
            seen.add(entry.name)
            children.append(entry)
    return parent, children


def parse_metalink(body: bytes) -> list[str]:
    """The replica URLs of a metalink (v3 or v4, RFC 5854), in document order.

    Like davix, element paths are matched and namespaces ignored: v3's
    ``metalink/files/file/resources/url`` and v4's ``metalink/file/url``.
    Only http(s) URLs are kept. Raises :class:`BadResponse` on malformed XML.
    """
    root = parse_xml(body, MAX_METALINK_BYTES, "metalink")

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    if local(root.tag) != "metalink":
        raise BadResponse(f"metalink document is a {root.tag!r}")
    urls = []
    for element in root.iter():
        if local(element.tag) == "url" and element.text:
            url = element.text.strip()
            if urlsplit(url).scheme in ("http", "https"):
                urls.append(url)
    return urls
