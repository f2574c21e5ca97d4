"""The federation front end: what a Dynafed (Apache + lcgdm-dav + UGR) answers.

Owns: the aiohttp application serving ``http://127.0.0.1:PORT/<prefix>/``:

* GET/HEAD on a file: ``302`` to the first online replica, with the lcgdm-dav
  ``Link: <//host:port/path?metalink>; rel=describedby; …`` header and Apache's
  "Found" page; ``Range`` ignored; no online replica: 404 (or 503); unknown: 404.
* GET/HEAD on a file with ``Want-Digest``: ``302`` to the first online replica
  on a ``candochecksum`` endpoint (UGR's ``DMLITE_RDR_ON_CHECKSUM``); if no
  endpoint is flagged, ``400`` "No plugin can calculate a checksum"; if none of
  the flagged ones is online, 404 (or 503) as for any redirect.
* GET/HEAD on a directory: HTML listing; without the trailing slash: ``301``.
* ``?metalink``: v3 (lcgdm-dav) or, if ``Accept`` mentions ``metalink4``, v4;
  URLs in redirect order, freshly signed.
* PROPFIND Depth 0/1: ``207`` (see ``propfind.py``), gzip-chunked when asked;
  no Depth or ``infinity``: 403; more than ``maxlistitems`` children: 500.
* OPTIONS: ``200``, ``DAV: 1,2``; TRACE/TRACK: 403; ``/.well-known/*``: 404;
  POST and other methods: 405.
* Authorization (with an :class:`~.auth.Authenticator`, HTTPS mode): requests
  must carry Apache's secret header (else 403); a bad bearer token is 401; GET
  and HEAD on a file (and ``?metalink``) need ``r``, a listing (PROPFIND Depth 1
  or GET on a collection) needs ``l``, a stat (PROPFIND Depth 0) is not checked;
  a denial is 403 with an HTML body. Behind Apache, the ``Link`` header and
  301s name the HTTPS host the client used.

Replica choice is delegated to a ``locate(relpath, fresh)`` callable; this
module never looks at endpoints or health itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from davfed_testfed import metalink, pages, propfind
from davfed_testfed.namespace import (
    Entry,
    count_children,
    href_of,
    list_dir,
    relpath_of,
    stat_entry,
)
from davfed_testfed.tokens import TokenError

if TYPE_CHECKING:
    from davfed_testfed.auth import Authenticator, Identity

log = logging.getLogger(__name__)

ALLOW = "OPTIONS,GET,HEAD,PROPFIND"
SERVER = "Apache (davfed testfed)"
XML_TYPE = 'text/xml; charset="utf-8"'

#: ``locate(relpath, fresh)``: replica URLs of a file, best first; ``fresh`` skips the cache.
Locate = Callable[[str, bool], list[str]]
#: ``locate_checksum(relpath)``: replica URLs on online candochecksum endpoints; None: none flagged.
LocateChecksum = Callable[[str], list[str] | None]


@dataclass(frozen=True, slots=True)
class FrontEndConfig:
    data_dir: Path
    prefix: str  # normalised: "/myfed" or ""
    host: str  # "127.0.0.1:PORT", for the Link header
    maxlistitems: int
    no_replica_status: int
    https: bool = False  # behind Apache: Link/301 name the Host the client used, https


def link_header(host: str, href: str) -> str:
    """The lcgdm-dav metalink pointer: scheme-relative, explicit port, ``?metalink``."""
    return f'<//{host}{href}?metalink>; rel=describedby; type="{metalink.V3_TYPE}"'


def _wants_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


async def _text_response(
    request: web.Request, status: int, body: bytes, content_type: str
) -> web.StreamResponse:
    """A body as Apache's DEFLATE filter sends it: gzip and chunked if the client asks."""
    if not _wants_gzip(request):
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})
    response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    response.enable_compression(web.ContentCoding.gzip)
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method != "HEAD":
        await response.write(body)
    await response.write_eof()
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=pages.error_page(status, message),
        headers={"Content-Type": pages.APACHE_HTML, **(headers or {})},
    )


class FrontEnd:
    """Request handling of the federation; stateless apart from its config."""

    def __init__(
        self,
        config: FrontEndConfig,
        locate: Locate,
        auth: Authenticator | None = None,
        locate_checksum: LocateChecksum | None = None,
    ) -> None:
        self._cfg = config
        self._locate = locate
        self._auth = auth
        self._locate_checksum = locate_checksum

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_response_prepare.append(self._server_header)
        return app

    @staticmethod
    async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if self._auth is not None and not self._auth.from_apache(request.headers):
            return _error(403, "Direct access to the back end is not allowed; use HTTPS.")
        if method in ("TRACE", "TRACK"):
            return _error(403, "TRACE and TRACK are not allowed.")
        if request.path.startswith("/.well-known/"):
            return _error(404, "The requested URL was not found on this server.")
        relpath = relpath_of(self._cfg.prefix, request.path)
        if method == "OPTIONS":
            return web.Response(
                status=200,
                headers={"DAV": "1,2", "Allow": ALLOW, "MS-Author-Via": "DAV"},
                body=b"",
            )
        who = None
        if self._auth is not None:
            try:
                who = self._auth.identify(request.headers)
            except TokenError as exc:
                challenge = f'Bearer error="invalid_token", error_description="{exc}"'
                return _error(401, f"Invalid bearer token: {exc}", {"WWW-Authenticate": challenge})
        entry = None if relpath is None else stat_entry(self._cfg.data_dir, relpath)
        if entry is None:
            return _error(404, "The requested URL was not found on this server.")
        mode = self._mode(request, entry)
        if who is not None and mode is not None and self._auth is not None:
            path = request.path
            if not self._auth.allowed(who, path, mode):
                return self._denied(who, path, mode)
        if method == "PROPFIND":
            return await self._propfind(request, entry)
        if method in ("GET", "HEAD"):
            if "metalink" in request.query:
                return self._metalink(request, entry)
            if entry.is_dir:
                return await self._directory(request, entry)
            if request.headers.get("Want-Digest", "").strip():
                return self._checksum_redirect(request, entry)
            return self._redirect(request, entry)
        return _error(405, f"The requested method {method} is not allowed.", {"Allow": ALLOW})

    # --- authorization ----------------------------------------------------------------------

    @staticmethod
    def _mode(request: web.Request, entry: Entry) -> str | None:
        """The mode letter Dynafed checks for this request (None: not checked)."""
        if request.method == "PROPFIND":
            depth = request.headers.get("Depth", "infinity").strip()
            return "l" if depth == "1" and entry.is_dir else None  # a stat is not checked
        if request.method in ("GET", "HEAD"):
            if entry.is_dir and "metalink" not in request.query:
                return "l" if request.rel_url.raw_path.endswith("/") else None  # 301 first
            return "r"
        return None

    @staticmethod
    def _denied(who: Identity, path: str, mode: str) -> web.Response:
        log.info("denied %s on %s to %s %s", mode, path, who.name, who.fqans)
        return _error(
            403,
            f"Unauthorized operation {mode} on {path} ClientName: {who.name} "
            f"fqans: {','.join(who.fqans)}",
        )

    def _public_host(self, request: web.Request) -> str:
        if self._cfg.https and request.host:
            return request.host
        return self._cfg.host

    # --- files ------------------------------------------------------------------------------

    def _checksum_redirect(self, request: web.Request, entry: Entry) -> web.Response:
        """Dynafed never computes a checksum: it redirects to a replica that can."""
        urls = None if self._locate_checksum is None else self._locate_checksum(entry.relpath)
        if urls is None:
            return _error(400, "No plugin can calculate a checksum")
        return self._redirect(request, entry, urls)

    def _redirect(
        self, request: web.Request, entry: Entry, urls: list[str] | None = None
    ) -> web.Response:
        if urls is None:
            urls = self._locate(entry.relpath, False)
        if not urls:
            return _error(
                self._cfg.no_replica_status,
                "No active endpoints have replicas of this file now.",
            )
        location = urls[0]
        href = href_of(self._cfg.prefix, entry.relpath, False)
        return web.Response(
            status=302,
            body=pages.redirect_page(302, location),
            headers={
                "Location": location,
                "Link": link_header(self._public_host(request), href),
                "Content-Type": pages.APACHE_HTML,
            },
        )

    def _metalink(self, request: web.Request, entry: Entry) -> web.Response:
        if entry.is_dir:
            return _error(404, "No metalink for a collection.")
        urls = self._locate(entry.relpath, True)
        if not urls:
            return _error(
                self._cfg.no_replica_status,
                "No active endpoints have replicas of this file now.",
            )
        name = f"{self._cfg.prefix}/{entry.relpath}"
        now = time.time()
        if metalink.wants_v4(request.headers.get("Accept")):
            body = metalink.metalink_v4(name, entry.size, urls, now)
            content_type = metalink.V4_TYPE
        else:
            body = metalink.metalink_v3(name, entry.size, urls, now)
            content_type = metalink.V3_TYPE
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})

    # --- directories ------------------------------------------------------------------------

    def _too_big(self, entry: Entry) -> bool:
        limit = self._cfg.maxlistitems
        return count_children(self._cfg.data_dir, entry.relpath, limit) > limit

    async def _directory(self, request: web.Request, entry: Entry) -> web.StreamResponse:
        if not request.rel_url.raw_path.endswith("/"):
            scheme = "https" if self._cfg.https else "http"
            href = href_of(self._cfg.prefix, entry.relpath, True)
            location = f"{scheme}://{self._public_host(request)}{href}"
            return web.Response(
                status=301,
                body=pages.redirect_page(301, location),
                headers={"Location": location, "Content-Type": pages.APACHE_HTML},
            )
        if self._too_big(entry):
            return _error(
                500,
                "Error getting directory content (likely the directory is bigger than the limit)",
            )
        children = list_dir(self._cfg.data_dir, entry.relpath)
        rows = [(quote(c.name) + ("/" if c.is_dir else ""), c) for c in children]
        title = f"{self._cfg.prefix}/{entry.relpath}".rstrip("/") + "/"
        return await _text_response(
            request, 200, pages.listing_page(title, rows), "text/html; charset=utf-8"
        )

    # --- PROPFIND ---------------------------------------------------------------------------

    async def _propfind(self, request: web.Request, entry: Entry) -> web.StreamResponse:
        depth = request.headers.get("Depth", "infinity").strip().lower()
        if depth not in ("0", "1"):
            return _error(403, 'PROPFIND requests with a Depth of "infinity" are not allowed.')
        try:
            wanted = propfind.parse_propfind(await request.read())
        except ValueError as exc:
            return _error(400, str(exc))
        items = [self._item(entry)]
        if depth == "1" and entry.is_dir:
            if self._too_big(entry):
                return _error(
                    500,
                    "Error getting directory content (likely the directory is "
                    "bigger than the limit)",
                )
            items.extend(self._item(c) for c in list_dir(self._cfg.data_dir, entry.relpath))
        body = propfind.multistatus(items, wanted)
        return await _text_response(request, 207, body, XML_TYPE)

    def _item(self, entry: Entry) -> tuple[str, Entry, str]:
        href = href_of(self._cfg.prefix, entry.relpath, entry.is_dir)
        name = entry.name if entry.relpath else self._cfg.prefix.rsplit("/", 1)[-1]
        return href, entry, name
