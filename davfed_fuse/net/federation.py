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
  :func:`~davfed_fuse.net.signedurl.renew_at`, and dropped on any 401/403/404/410/5xx
  or connection error from it; the federation is then asked again, once.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import NoReturn, cast
from urllib.parse import urlsplit

import httpx
import trio

from davfed_fuse.buffers import Buffer, new_buffer
from davfed_fuse.errors import (
    BadResponse,
    IntegrityError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.net.signedurl import renew_at
from davfed_fuse.net.transport import (
    SMALL_BODY,
    BodyPlan,
    Endpoints,
    Redirect,
    TargetFailed,
    body_complete,
    body_failed,
    connection_error,
    plan_body,
    redirect_target,
    status_error,
)
from davfed_fuse.net.webdav import (
    METALINK_ACCEPT,
    PROPFIND_BODY,
    RemoteEntry,
    parse_metalink,
    parse_multistatus,
    split_listing,
    url_for,
)
from davfed_fuse.redaction import redact_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Target:
    """Where the federation sent us for one file, and until when to believe it."""

    url: str
    renew_at: float | None  # wall-clock seconds; None: no expiry in the URL


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class Federation:
    """The federation at ``base_url`` seen through one ``httpx.AsyncClient``.

    The client must not follow redirects on its own (``follow_redirects=False``,
    the httpx default); this class does it.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        background_client: httpx.AsyncClient | None = None,
        *,
        endpoints: Endpoints | None = None,
        federation_headers: Callable[[], dict[str, str]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        budget: float = 120.0,
        retries: int = 3,
        penalty: float = 30.0,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.root_path = urlsplit(self.base_url).path
        self._origin = origin(self.base_url)
        self._client = client
        # Read-ahead gets connections of its own, so that a reader's request finds
        # an idle, warmed-up connection instead of queueing behind 8 MiB transfers.
        self._background = background_client or client
        # Storage endpoints' data: in worker threads straight into the buffer (see
        # endpoints.py); without, through the httpx clients like everything else.
        self._endpoints = endpoints
        self._federation_headers = federation_headers or dict
        self._wall_clock = wall_clock
        #: Seconds one call of :meth:`stat`, :meth:`listdir` or :meth:`read` may take
        #: in all, redirects and the second try included (then UpstreamTimeout).
        self.budget = budget
        #: Rounds over all replicas after the first, each after a backoff.
        self.retries = retries
        #: Seconds a failed endpoint is passed over while others are left.
        self.penalty = penalty
        self._penalties: dict[tuple[str, str, int | None], float] = {}
        self._targets: dict[str, Target] = {}
        # Files whose redirect is being followed: concurrent reads of one wait for it.
        self._locating: dict[str, trio.Event] = {}

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
            try:
                response = await self._client.request(
                    "PROPFIND", url, headers=headers, content=PROPFIND_BODY
                )
            except httpx.TransportError as exc:
                raise transport_error(exc, f"PROPFIND {path or '/'}") from exc
            if response.status_code in (301, 302, 303, 307, 308):
                url = redirect_target(url, response.headers.get("Location"), response.status_code)
                if origin(url) != self._origin:
                    raise BadResponse(f"PROPFIND {path!r} redirected off the federation")
                continue
            break
        else:
            raise BadResponse(f"PROPFIND {path!r}: more than {MAX_REDIRECTS} redirects")
        if response.status_code == 207:
            return parse_multistatus(response.content, self.root_path)
        raise status_error(response.status_code, f"PROPFIND {path or '/'}")

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

    async def read(
        self, path: str, start: int, end: int, size: int, *, background: bool = False
    ) -> Buffer:
        """Bytes ``[start, end)`` of the file ``path`` whose size is ``size``.

        Returns exactly ``min(end, size) - start`` bytes (empty at or past EOF),
        or raises; never returns bytes that disagree with the federation's size.
        A file no replica can serve is an :class:`UpstreamError` (EIO), not
        NotFound: its metadata says it exists.
        See :meth:`_read` for how replicas are chosen and failures survived.
        """
        end = min(end, size)
        if start >= end:
            return b""
        with self._deadline(f"read {path} [{start}, {end})"):
            try:
                client = self._background if background else self._client
                return await self._read(path, start, end, size, client)
            except NotFound as exc:
                # The file exists (its metadata says so) but no replica serves it:
                # Dynafed answers 404 when no endpoint with a replica is online.
                raise UpstreamError(f"{path}: no replica can serve it now ({exc})") from exc

    async def _read(
        self, path: str, start: int, end: int, size: int, client: httpx.AsyncClient
    ) -> Buffer:
        """Fill ``[start, end)`` from whichever replica can serve it.

        1. The file's remembered target, if fresh and its endpoint is not penalised.
        2. Otherwise the federation's redirect (one round trip, then the data).
        3. After a replica failed: the federation's metalink, in its order,
           skipping replicas that failed recently.

        A replica that fails mid-body keeps the bytes it sent: the read goes on
        from there on the next replica. When every replica has failed once, or
        the federation offers none, the next round starts after a backoff with
        jitter; after ``retries`` rounds the last error is raised. The caller's
        deadline bounds all of it.
        """
        buffer = new_buffer(end - start)
        view = memoryview(buffer)
        pos = start
        replicas: list[str] | None = None  # from the metalink, once a replica failed
        tried: set[tuple[str, str, int | None]] = set()
        rounds = 0
        moved = 0
        last_error: Exception | None = None
        try:
            while pos < end:
                into = view[pos - start :]
                try:
                    url = self._usable_target(path)
                    if url is not None:
                        try:
                            pos += await self._get_range(client, url, pos, end, size, into)
                        except Redirect:
                            # The target moved on: ask the federation again, a few times.
                            self._targets.pop(path, None)
                            moved += 1
                            if moved > MAX_REDIRECTS:
                                raise BadResponse(f"{path}: its replicas keep moving") from None
                        continue
                    locating = self._locating.get(path)
                    if locating is not None and replicas is None:
                        # Another read of this file is following the federation's
                        # redirect: use its target rather than ask the federation too.
                        await locating.wait()
                        if self._usable_target(path) is not None:
                            continue
                    if replicas is None:
                        got, url = await self._read_following(client, path, pos, end, size, into)
                        if got is not None:
                            pos += got
                            self._remember(path, url)
                            continue
                        replicas = await self._replicas(path, fallback=url)
                    url = self._next_replica(replicas, tried)
                    if url is None:
                        rounds += 1
                        if rounds > self.retries:
                            raise last_error or UpstreamError(f"{path}: no replica left")
                        await trio.sleep(backoff(rounds))
                        tried.clear()
                        replicas = await self._replicas(path, fallback=None)
                        continue
                    tried.add(origin(url))
                    pos += await self._get_range(client, url, pos, end, size, into)
                    self._remember(path, url)
                except TargetFailed as failed:
                    pos += failed.got
                    self._targets.pop(path, None)
                    self._penalise(failed.url)
                    last_error = failed.error
                    tried.add(origin(failed.url))
                    # The next turn asks the federation again (the 302 and, if that
                    # names a penalised endpoint, the metalink), inside this try.
                    log.warning(
                        "replica failed, trying another: %s",
                        failed.error,
                        extra={"event.action": "failover", "url.path": path},
                    )
                except NotFound as exc:
                    # The federation offers no replica of a file it lists: Dynafed's
                    # answer while its checker sees no endpoint online. That heals as
                    # endpoints come back: ask again after a backoff.
                    rounds += 1
                    if rounds > self.retries:
                        raise
                    log.info(
                        "%s: the federation offers no replica now (%s); asking again", path, exc
                    )
                    await trio.sleep(backoff(rounds))
                    replicas = None
                    tried.clear()
        finally:
            view.release()
        return buffer

    def _usable_target(self, path: str) -> str | None:
        target = self._targets.get(path)
        if target is None:
            return None
        if target.renew_at is not None and self._wall_clock() >= target.renew_at:
            del self._targets[path]
            return None
        if self._penalised(target.url):
            del self._targets[path]
            return None
        return target.url

    def _remember(self, path: str, url: str) -> None:
        self._targets[path] = Target(url, renew_at(url, now=self._wall_clock()))

    def forget_target(self, path: str) -> None:
        self._targets.pop(path, None)

    def _penalise(self, url: str) -> None:
        self._penalties[origin(url)] = self._wall_clock() + self.penalty

    def _penalised(self, url: str) -> bool:
        until = self._penalties.get(origin(url))
        if until is None:
            return False
        if self._wall_clock() >= until:
            del self._penalties[origin(url)]
            return False
        return True

    def _next_replica(
        self, replicas: list[str], tried: set[tuple[str, str, int | None]]
    ) -> str | None:
        """The first replica of this round not tried yet, preferring unpenalised ones."""
        fresh = [url for url in replicas if origin(url) not in tried]
        for url in fresh:
            if not self._penalised(url):
                return url
        return fresh[0] if fresh else None

    async def _replicas(self, path: str, *, fallback: str | None) -> list[str]:
        """The file's replica URLs from the federation's metalink, in its order.

        Without a metalink (the federation has none, or it failed), the
        federation's current redirect target (``fallback``, or a fresh one).
        """
        url = url_for(self.base_url, path) + "?metalink"
        headers = {"Accept": METALINK_ACCEPT, **self._headers_for(url)}
        try:
            response = await self._client.get(url, headers=headers)
            if response.status_code == 200:
                replicas = parse_metalink(response.content)
                if replicas:
                    return replicas
            log.info("no metalink for %s (HTTP %d)", path, response.status_code)
        except (httpx.HTTPError, BadResponse) as exc:
            log.info("no metalink for %s: %s", path, exc)
        if fallback is None:
            fallback = await self._locate(path)
        return [fallback]

    async def _locate(self, path: str) -> str:
        """Where the federation redirects a GET of ``path`` now (without reading data)."""
        url = url_for(self.base_url, path)
        for _hop in range(MAX_REDIRECTS + 1):
            if origin(url) != self._origin:
                return url
            request = self._client.build_request("HEAD", url, headers=self._headers_for(url))
            response = await self._client.send(request)
            if response.status_code not in (301, 302, 303, 307, 308):
                raise status_error(response.status_code, f"HEAD {path}")
            url = redirect_target(url, response.headers.get("Location"), response.status_code)
        raise BadResponse(f"HEAD {path!r}: more than {MAX_REDIRECTS} redirects")

    @contextmanager
    def _deadline(self, what: str) -> Iterator[None]:
        try:
            with trio.fail_after(self.budget):
                yield
        except trio.TooSlowError:
            raise UpstreamTimeout(f"{what}: no answer within {self.budget:g} s") from None

    async def _read_following(
        self,
        client: httpx.AsyncClient,
        path: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
    ) -> tuple[int | None, str]:
        """Ranged GET on the federation, following its redirects to the data.

        Returns (bytes read, the URL that served them), or (None, URL) when the
        federation redirects to an endpoint that failed recently. Concurrent reads
        of the file wait (in :meth:`_read`) until the redirect is known, then read
        from the same endpoint at once, in parallel with this one.
        """
        url = url_for(self.base_url, path)
        located = trio.Event()
        owner = self._locating.setdefault(path, located) is located
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                federation = origin(url) == self._origin
                if not federation:
                    if self._penalised(url):
                        return None, url
                    if owner and not located.is_set():
                        self._remember(path, url)
                        located.set()
                try:
                    got = await self._get_range(client, url, start, end, size, into, federation)
                    return got, url
                except Redirect as redirect:
                    url = redirect.location
            raise BadResponse(f"GET {path!r}: more than {MAX_REDIRECTS} redirects")
        finally:
            if owner:
                del self._locating[path]
                located.set()

    async def _get_range(
        self,
        client: httpx.AsyncClient,
        url: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
        federation: bool = False,
    ) -> int:
        """:meth:`_transfer`, with one log event per transaction with a storage endpoint.

        Dynafed never learns whether the client's transfer after its redirect
        worked; the client does, so it records it (for ELK: ECS field names).
        """
        if federation:
            return await self._transfer(client, url, start, end, size, into, federation)
        started = trio.current_time()
        got = 0
        error: str | None = "cancelled"  # unless it ends one of the two ways below
        try:
            got = await self._transfer(client, url, start, end, size, into, federation)
            error = None
            return got
        except TargetFailed as failed:
            got, error = failed.got, str(failed.error)
            raise
        finally:
            parts = urlsplit(url)
            log.info(
                "GET %s bytes %d-%d: %s",
                redact_url(url),
                start,
                end - 1,
                "ok" if error is None else error,
                extra={
                    "event.action": "read",
                    "event.outcome": "success" if error is None else "failure",
                    "event.duration": int((trio.current_time() - started) * 1e9),
                    "destination.domain": parts.hostname,
                    "destination.port": parts.port,
                    "url.path": parts.path,
                    "http.request.method": "GET",
                    "http.response.body.bytes": got,
                    "davfed.range": f"{start}-{end - 1}",
                },
            )

    async def _transfer(
        self,
        client: httpx.AsyncClient,
        url: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
        federation: bool,
    ) -> int:
        """GET ``[start, end)`` of ``url`` into ``into``; the number of bytes read.

        Raises :class:`Redirect` for a 3xx. Failures of the federation raise
        their davfed error; failures of an endpoint raise :class:`TargetFailed`
        (with the bytes read before the failure, which are good).
        """
        if not federation and self._endpoints is not None:
            return await self._endpoints.get_range(
                url, start, end, size, into, background=client is not self._client
            )
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if federation:
            headers.update(self._headers_for(url))
        request = client.build_request("GET", url, headers=headers)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            _fail(transport_error(exc, f"GET {redact_url(url)}"), url, federation)
        try:
            try:
                plan = plan_body(response.status_code, response.headers.get, url, start, end, size)
            except Exception as exc:
                # Read a short body to its end, so that the connection stays open: the
                # federation's 302 is followed by the next file's 302 on it (a new
                # connection would cost a round trip more).
                await _read_small_body(response)
                if isinstance(exc, Redirect):
                    raise
                _fail(exc, url, federation)
            if plan is None:
                await _read_small_body(response)
                return 0
            return await self._collect(response, url, into[: end - start], plan)
        finally:
            await response.aclose()

    async def _collect(
        self, response: httpx.Response, url: str, into: memoryview, plan: BodyPlan
    ) -> int:
        """Read ``len(into)`` bytes of the body into ``into`` after discarding ``plan.skip``
        bytes.

        ``plan.exact``: the body must hold exactly that many bytes (a 206 answer),
        and is read to its end; otherwise reading stops once ``into`` is full
        (a 200 answer carrying the whole file). The body is read raw (davfed
        asks for ``identity`` encoding): one copy per socket read, no re-chunking.
        """
        skip, exact = plan.skip, plan.exact
        want = len(into)
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
                        message = f"{redact_url(url)}: body longer than {want} bytes"
                        raise TargetFailed(IntegrityError(message), url, filled)
                    into[filled : filled + take] = chunk[:take]
                    filled += take
                    if filled == want and not exact:
                        break
        except httpx.TimeoutException as exc:
            raise body_failed(url, filled, exc, timed_out=True) from exc
        except httpx.TransportError as exc:
            raise body_failed(url, filled, exc, timed_out=False) from exc
        return body_complete(url, filled, want)

    def remembered_targets(self) -> int:
        """How many files' redirect targets are remembered (a table size for the operator)."""
        return len(self._targets)


def transport_error(exc: httpx.TransportError, what: str) -> Exception:
    """The davfed error for a failed httpx connection (see :func:`connection_error`)."""
    return connection_error(exc, what, timed_out=isinstance(exc, httpx.TimeoutException))


async def _read_small_body(response: httpx.Response) -> None:
    """Read the body of an answer that carries no data, if it is short (else leave it:
    closing the response then closes its connection)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= SMALL_BODY:
        with contextlib.suppress(httpx.HTTPError):
            await response.aread()


def _fail(error: Exception, url: str, federation: bool) -> NoReturn:
    """Raise ``error`` as is for the federation, or as a failed replica for an endpoint."""
    if federation:
        raise error
    raise TargetFailed(error, url)


def backoff(round_number: int, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds to wait before retry round ``round_number`` (1, 2, ...): exponential, jittered."""
    delay: float = min(cap, base * 2.0 ** (round_number - 1))
    return delay * random.uniform(0.5, 1.0)
