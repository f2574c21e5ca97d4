"""Talking to a Dynafed federation and to the storage endpoints it redirects to.

Owns: the HTTP requests davfed makes (PROPFIND for metadata, ranged GETs for
data), following redirects by hand, remembering each file's redirect target
until shortly before its signed expiry, and turning HTTP outcomes into the
exceptions of :mod:`davfed_fuse.errors`.
Must not import: pyfuse3, the namespace or the cache.

Redirect policy (dynafed-protocol.md §3, §4):

* A GET on the federation answers 302 to one replica. davfed follows it itself,
  up to :data:`MAX_REDIRECTS` hops, only to http/https URLs.
* Headers that carry credentials (``Authorization``) are only ever sent to the
  federation's own host; a redirect target gets none (S3 refuses a pre-signed
  URL that also carries ``Authorization``).
* The target of a file is reused for all reads of that file until
  :func:`~davfed_fuse.signedurl.renew_at`, and dropped on any 401/403/404/410/5xx
  or connection error from it; the federation is then asked again, once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import NoReturn, cast
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from davfed_fuse.errors import (
    BadResponse,
    Forbidden,
    IntegrityError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.signedurl import redact_url, renew_at
from davfed_fuse.webdav import (
    PROPFIND_BODY,
    RemoteEntry,
    parse_multistatus,
    split_listing,
    url_for,
)

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _TargetFailed(Exception):
    """A redirect target failed in a way that asking the federation again may fix."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class Target:
    """Where the federation sent us for one file, and until when to believe it."""

    url: str
    renew_at: float | None  # wall-clock seconds; None: no expiry in the URL


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes a-b/total`` -> (a, b + 1, total or None). Raises BadResponse."""
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise BadResponse(f"unreadable Content-Range {value!r}")
    first, last, total = match.groups()
    return int(first), int(last) + 1, None if total == "*" else int(total)


class Federation:
    """The federation at ``base_url`` seen through one ``httpx.AsyncClient``.

    The client must not follow redirects on its own (``follow_redirects=False``,
    the httpx default); this class does it.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        federation_headers: Callable[[], dict[str, str]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        budget: float = 120.0,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.root_path = urlsplit(self.base_url).path
        self._origin = origin(self.base_url)
        self._client = client
        self._federation_headers = federation_headers or dict
        self._wall_clock = wall_clock
        #: Seconds one call of :meth:`stat`, :meth:`listdir` or :meth:`read` may take
        #: in all, redirects and the second try included (then UpstreamTimeout).
        self.budget = budget
        self._targets: dict[str, Target] = {}

    # -- metadata ---------------------------------------------------------

    def _headers_for(self, url: str) -> dict[str, str]:
        return self._federation_headers() if origin(url) == self._origin else {}

    async def propfind(self, path: str, depth: int, *, is_dir: bool = False) -> list[RemoteEntry]:
        """PROPFIND ``path`` with ``Depth: depth`` (0 or 1)."""
        url = url_for(self.base_url, path, is_dir=is_dir)
        headers = {
            "Depth": str(depth),
            "Content-Type": 'application/xml; charset="utf-8"',
            **self._headers_for(url),
        }
        for _hop in range(MAX_REDIRECTS + 1):
            response = await self._client.request(
                "PROPFIND", url, headers=headers, content=PROPFIND_BODY
            )
            if response.status_code in (301, 302, 303, 307, 308):
                url = self._redirect_url(url, response)
                if origin(url) != self._origin:
                    raise BadResponse(f"PROPFIND {path!r} redirected off the federation")
                continue
            break
        else:
            raise BadResponse(f"PROPFIND {path!r}: more than {MAX_REDIRECTS} redirects")
        if response.status_code == 207:
            return parse_multistatus(response.content, self.root_path)
        raise self._status_error(response, f"PROPFIND {path or '/'}")

    async def stat(self, path: str) -> RemoteEntry:
        """What the federation says about ``path``; NotFound if it does not exist."""
        with self._deadline(f"stat {path or '/'}"):
            entries = await self.propfind(path, 0)
        for entry in entries:
            if entry.path == path:
                return entry
        raise BadResponse(f"PROPFIND {path or '/'} did not describe the path asked for")

    async def listdir(self, path: str) -> tuple[RemoteEntry | None, list[RemoteEntry]]:
        """The directory ``path`` and its children (PROPFIND Depth 1)."""
        with self._deadline(f"listing {path or '/'}"):
            entries = await self.propfind(path, 1, is_dir=True)
        return split_listing(entries, path)

    # -- data ---------------------------------------------------------------

    async def read(self, path: str, start: int, end: int, size: int) -> bytes | bytearray:
        """Bytes ``[start, end)`` of the file ``path`` whose size is ``size``.

        Returns exactly ``min(end, size) - start`` bytes (empty at or past EOF).
        Uses the file's remembered target; on a failure of the target, asks the
        federation again once.
        """
        end = min(end, size)
        if start >= end:
            return b""
        with self._deadline(f"read {path} [{start}, {end})"):
            return await self._read(path, start, end, size)

    async def _read(self, path: str, start: int, end: int, size: int) -> bytes | bytearray:
        for attempt in range(2):
            target = self._fresh_target(path)
            try:
                if target is None:
                    data, url = await self._read_following(path, start, end, size)
                    self._targets[path] = Target(url, renew_at(url, now=self._wall_clock()))
                    return data
                return await self._read_target(target.url, start, end, size)
            except _TargetFailed as failed:
                self._targets.pop(path, None)
                if attempt:
                    raise failed.error from None
                log.info("re-resolving %s after: %s", path, failed.error)
        raise AssertionError("unreachable")

    @contextmanager
    def _deadline(self, what: str) -> Iterator[None]:
        try:
            with trio.fail_after(self.budget):
                yield
        except trio.TooSlowError:
            raise UpstreamTimeout(f"{what}: no answer within {self.budget:g} s") from None

    def forget_target(self, path: str) -> None:
        self._targets.pop(path, None)

    def _fresh_target(self, path: str) -> Target | None:
        target = self._targets.get(path)
        if target is None:
            return None
        if target.renew_at is not None and self._wall_clock() >= target.renew_at:
            del self._targets[path]
            return None
        return target

    async def _read_following(
        self, path: str, start: int, end: int, size: int
    ) -> tuple[bytes | bytearray, str]:
        """Ranged GET on the federation, following redirects to the data."""
        url = url_for(self.base_url, path)
        for _hop in range(MAX_REDIRECTS + 1):
            is_federation = origin(url) == self._origin
            try:
                return await self._get_range(url, start, end, size, federation=is_federation), url
            except _Redirect as redirect:
                url = redirect.location
        raise BadResponse(f"GET {path!r}: more than {MAX_REDIRECTS} redirects")

    async def _read_target(self, url: str, start: int, end: int, size: int) -> bytes | bytearray:
        try:
            return await self._get_range(url, start, end, size, federation=False)
        except _Redirect as redirect:
            # A target that redirects again (a DPM head node) is not a stable
            # target: treat it as failed so the whole chain is walked again.
            error = UpstreamError(f"target redirected to {redirect.location}")
            raise _TargetFailed(error) from None

    async def _get_range(
        self, url: str, start: int, end: int, size: int, *, federation: bool
    ) -> bytes | bytearray:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if federation:
            headers.update(self._headers_for(url))
        request = self._client.build_request("GET", url, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            _fail(UpstreamTimeout(f"GET {redact_url(url)}: {type(exc).__name__}"), federation)
        except httpx.TransportError as exc:
            _fail(UpstreamError(f"GET {redact_url(url)}: {type(exc).__name__}: {exc}"), federation)
        try:
            status = response.status_code
            if status in (301, 302, 303, 307, 308):
                raise _Redirect(self._redirect_url(url, response))
            if status == 206:
                return await self._read_partial(response, url, start, end, size)
            if status == 200:
                return await self._read_skipping(response, url, start, end, size)
            if status == 416 and start >= size:
                return b""
            _fail(self._status_error(response, f"GET {redact_url(url)}"), federation)
        finally:
            await response.aclose()

    async def _read_partial(
        self, response: httpx.Response, url: str, start: int, end: int, size: int
    ) -> bytearray:
        first, stop, total = parse_content_range(response.headers.get("Content-Range", ""))
        if total is not None and total != size:
            raise _TargetFailed(
                IntegrityError(f"{redact_url(url)} has {total} bytes, the federation says {size}")
            )
        if first != start or stop != end:
            raise _TargetFailed(
                IntegrityError(f"{redact_url(url)} sent bytes {first}-{stop} for {start}-{end}")
            )
        return await self._collect(response, url, end - start, skip=0, exact=True)

    async def _read_skipping(
        self, response: httpx.Response, url: str, start: int, end: int, size: int
    ) -> bytearray:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise _TargetFailed(
                IntegrityError(f"{redact_url(url)} has {length} bytes, the federation says {size}")
            )
        return await self._collect(response, url, end - start, skip=start, exact=False)

    async def _collect(
        self, response: httpx.Response, url: str, want: int, *, skip: int, exact: bool
    ) -> bytearray:
        """Read ``want`` bytes of the body after discarding ``skip`` bytes.

        ``exact``: the body must hold exactly that many bytes (a 206 answer),
        and is read to its end; otherwise reading stops once ``want`` bytes
        are in (a 200 answer carrying the whole file).

        The body is read raw (davfed asks for ``identity`` encoding) straight
        into one preallocated buffer: no re-chunking, one copy per socket read.
        """
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            raise _TargetFailed(BadResponse(f"{redact_url(url)} sent {encoding}-encoded data"))
        buffer = bytearray(want)
        view = memoryview(buffer)
        filled = 0
        try:
            # httpx types aiter_raw() as an iterator; it is a generator to close.
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
            async with aclosing(chunks):
                async for chunk in chunks:
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    take = min(len(chunk), want - filled)
                    if take < len(chunk) and exact:
                        raise _TargetFailed(
                            IntegrityError(f"{redact_url(url)}: body longer than {want} bytes")
                        )
                    view[filled : filled + take] = chunk[:take]
                    filled += take
                    if filled == want and not exact:
                        break
        except httpx.TimeoutException as exc:
            raise _TargetFailed(UpstreamTimeout(f"reading {redact_url(url)}: timed out")) from exc
        except httpx.TransportError as exc:
            raise _TargetFailed(UpstreamError(f"reading {redact_url(url)}: {exc!r}")) from exc
        finally:
            view.release()
        if filled < want:
            raise _TargetFailed(
                IntegrityError(f"{redact_url(url)}: body ended after {filled} of {want} bytes")
            )
        return buffer

    # -- helpers --------------------------------------------------------------

    @staticmethod
    def _redirect_url(url: str, response: httpx.Response) -> str:
        location: str | None = response.headers.get("Location")
        if not location:
            raise BadResponse(f"{response.status_code} from {redact_url(url)} without Location")
        target = urljoin(url, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise BadResponse(f"redirect from {redact_url(url)} to a non-HTTP URL")
        return target

    @staticmethod
    def _status_error(response: httpx.Response, what: str) -> Exception:
        status = response.status_code
        message = f"{what}: HTTP {status}"
        if status in (404, 410):
            return NotFound(message)
        if status in (401, 403):
            return Forbidden(message)
        if status in (408, 504):
            return UpstreamTimeout(message)
        return UpstreamError(message)


def _fail(error: Exception, federation: bool) -> NoReturn:
    """Raise ``error`` as is for the federation, or as a failed target for an endpoint."""
    if federation:
        raise error
    raise _TargetFailed(error)


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location
