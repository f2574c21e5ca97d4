"""Talking to a Dynafed federation and to the storage endpoints it redirects to.

Owns: the requests davfed makes of a federation: PROPFIND for metadata and HEAD
(over httpx, :mod:`davfed_fuse.net.httpclient`), ranged GETs for data (all over
the one ranged-GET transport, :mod:`davfed_fuse.net.transport`), and the read
loop that survives failing replicas (with the policy of
:mod:`davfed_fuse.net.replicas`). Everything it raises is an exception of
:mod:`davfed_fuse.errors`: httpx's are translated at the boundary.
Must not import: pyfuse3, the namespace or the cache.

Redirect policy (dynafed-protocol.md §3, §4):

* A GET on the federation answers 302 to one replica. davfed follows it itself
  (:func:`davfed_fuse.net.http.follow`), up to :data:`MAX_REDIRECTS` hops, only to
  http/https URLs.
* Headers that carry credentials (``Authorization``) are only ever sent to the
  federation's own origin; a redirect target gets none (S3 refuses a pre-signed
  URL that also carries ``Authorization``).
* The target of a file is reused for all reads of that file until
  :func:`~davfed_fuse.net.signedurl.renew_at` (or a while, for a URL without an
  expiry), and dropped on any 401/403/404/410/5xx or connection error from it; the
  federation is then asked again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import trio

from davfed_fuse.buffers import Buffer, new_buffer
from davfed_fuse.errors import (
    BadResponse,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.net.http import (
    MAX_REDIRECTS,
    REDIRECTS,
    Origin,
    Redirect,
    TargetFailed,
    follow,
    origin,
    redirect_target,
    status_error,
)
from davfed_fuse.net.httpclient import map_exceptions
from davfed_fuse.net.observe import Exchange, NullObserver, Observer, Transaction, log_exchange
from davfed_fuse.net.replicas import (
    MAX_TARGETS,
    TARGET_TTL,
    Penalties,
    Targets,
    backoff,
    next_replica,
)
from davfed_fuse.net.transport import Lane, Reply, Transport
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

__all__ = ["MAX_REDIRECTS", "Answer", "Federation", "Lane"]

#: The transaction (one :meth:`Federation.read`) the running task is in.
_TRANSACTION: ContextVar[Transaction | None] = ContextVar("davfed_transaction", default=None)


@dataclass(frozen=True, slots=True)
class Answer:
    """The last answer of a request whose redirects were followed (see :meth:`Federation.head`)."""

    url: str  # the URL that gave it
    hops: int  # redirects followed to get there
    status: int
    reason: str
    headers: Mapping[str, str]


class Federation:
    """The federation at ``base_url``: metadata through ``client``, data through ``transport``.

    ``client`` must not follow redirects on its own (``follow_redirects=False``,
    the httpx default); this class does it. ``transport`` carries every ranged GET,
    to the federation and to its endpoints (a plain :class:`Transport` if none).
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        transport: Transport | None = None,
        federation_headers: Callable[[], dict[str, str]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        budget: float = 120.0,
        retries: int = 3,
        penalty: float = 30.0,
        retry_delay: Callable[[int], float] = backoff,
        target_ttl: float = TARGET_TTL,
        max_targets: int = MAX_TARGETS,
        observer: Observer | None = None,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.root_path = urlsplit(self.base_url).path
        self._origin = origin(self.base_url)
        self._client = client
        self._transport = transport if transport is not None else Transport()
        self._federation_headers = federation_headers or dict
        #: Seconds one call of :meth:`stat`, :meth:`listdir` or :meth:`read` may take
        #: in all, redirects and the second try included (then UpstreamTimeout).
        self.budget = budget
        #: Rounds over all replicas after the first, each after ``retry_delay(round)``.
        self.retries = retries
        self._retry_delay = retry_delay
        self._penalties = Penalties(wall_clock, penalty)
        #: Told of every exchange, failover, retry, metalink and redirect (counters).
        self.observer: Observer = observer if observer is not None else NullObserver()
        self._targets = Targets(wall_clock, ttl=target_ttl, maxsize=max_targets)
        # Files whose redirect is being followed: concurrent reads of one wait for it.
        self._locating: dict[str, trio.Event] = {}
        #: Called after every transaction with a storage endpoint as
        #: ``(url, bytes, seconds, error or None)`` (measured replica choice).
        self.on_transfer: Callable[[str, int, float, str | None], None] | None = None

    async def aclose(self) -> None:
        """Close the httpx client and the transport's idle connections."""
        self._transport.close()
        await self._client.aclose()

    # -- metadata ---------------------------------------------------------

    def _headers_for(self, url: str) -> dict[str, str]:
        return self._federation_headers() if origin(url) == self._origin else {}

    async def propfind(self, path: str, depth: int, *, is_dir: bool = False) -> list[RemoteEntry]:
        """PROPFIND ``path`` with ``Depth: depth`` (0 or 1)."""
        what = f"PROPFIND {path or '/'}"

        async def step(url: str, _hop: int) -> httpx.Response:
            headers = {
                "Depth": str(depth),
                "Content-Type": 'application/xml; charset="utf-8"',
                **self._headers_for(url),
            }
            with map_exceptions(what):
                response = await self._client.request(
                    "PROPFIND", url, headers=headers, content=PROPFIND_BODY
                )
            if response.status_code in REDIRECTS:
                location = response.headers.get("Location")
                target = redirect_target(url, location, response.status_code)
                if origin(target) != self._origin:
                    raise BadResponse(f"PROPFIND {path!r} redirected off the federation")
                raise Redirect(target)
            return response

        response = await follow(url_for(self.base_url, path, is_dir=is_dir), step, what=what)
        if response.status_code == 207:
            return parse_multistatus(response.content, self.root_path)
        raise status_error(response.status_code, what)

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

    async def head(
        self, url: str, headers: Mapping[str, str], *, max_redirects: int = MAX_REDIRECTS
    ) -> Answer:
        """HEAD ``url`` with ``headers``, following redirects: the answer at the end of them.

        The federation's own credentials go to its origin only. A replica that
        refuses HEAD (403 or 405: S3 URLs are signed for GET only) is asked with a
        GET whose body is not read.
        """
        what = f"HEAD {redact_url(url)}"

        async def step(url: str, hop: int) -> Answer:
            sent = {**headers, **self._headers_for(url)}
            with map_exceptions(f"HEAD {redact_url(url)}"):
                response = await self._client.head(url, headers=sent)
                if hop > 0 and response.status_code in (403, 405):
                    async with self._client.stream("GET", url, headers=sent) as response:
                        pass
            status = response.status_code
            if status in REDIRECTS:
                raise Redirect(redirect_target(url, response.headers.get("Location"), status))
            return Answer(url, hop, status, response.reason_phrase, response.headers)

        with self._deadline(what):
            return await follow(url, step, what=what, max_redirects=max_redirects)

    # -- data ---------------------------------------------------------------

    async def read(
        self, path: str, start: int, end: int, size: int, *, lane: Lane = Lane.FOREGROUND
    ) -> Buffer:
        """Bytes ``[start, end)`` of the file ``path`` whose size is ``size``.

        Returns exactly ``min(end, size) - start`` bytes (empty at or past EOF),
        or raises; never returns bytes that disagree with the federation's size.
        A file no replica can serve is an :class:`UpstreamError` (EIO), not
        NotFound: its metadata says it exists. ``lane``: whose transfer it is (a
        reader's, or read-ahead's). See :meth:`_read` for how replicas are chosen
        and failures survived.
        """
        end = min(end, size)
        if start >= end:
            return b""
        transaction = Transaction.new(path, readahead=lane is Lane.BACKGROUND)
        token = _TRANSACTION.set(transaction)
        # Through a caching proxy, the first byte may wait for the cache to fill.
        extra = self._transport.allowance(start)
        try:
            with self._deadline(f"read {path} [{start}, {end})", extra):
                try:
                    return await self._read(path, start, end, size, lane)
                except NotFound as exc:
                    # The file exists (its metadata says so) but no replica serves it:
                    # Dynafed answers 404 when no endpoint with a replica is online.
                    raise UpstreamError(f"{path}: no replica can serve it now ({exc})") from exc
        finally:
            _TRANSACTION.reset(token)

    async def _read(self, path: str, start: int, end: int, size: int, lane: Lane) -> Buffer:
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
        tried: set[Origin] = set()
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
                            pos += await self._get_range(url, pos, end, size, into, lane)
                        except Redirect:
                            # The target moved on: ask the federation again, a few times.
                            self._targets.forget(path)
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
                        got, url = await self._read_following(path, pos, end, size, into, lane)
                        if got is not None:
                            pos += got
                            self._targets.remember(path, url)
                            continue
                        replicas = await self._replicas(path, fallback=url)
                    url = next_replica(replicas, tried, self._penalties)
                    if url is None:
                        rounds += 1
                        if rounds > self.retries:
                            raise last_error or UpstreamError(f"{path}: no replica left")
                        self._count_retry()
                        await trio.sleep(self._retry_delay(rounds))
                        tried.clear()
                        replicas = await self._replicas(path, fallback=None)
                        continue
                    tried.add(origin(url))
                    pos += await self._get_range(url, pos, end, size, into, lane)
                    self._targets.remember(path, url)
                except TargetFailed as failed:
                    if failed.trusted:  # the good bytes stay: go on from there
                        pos += failed.got
                    self._targets.forget(path)
                    self._penalties.penalise(failed.url)
                    last_error = failed.error
                    tried.add(origin(failed.url))
                    self._count_failover()
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
                    self._count_retry()
                    log.info(
                        "%s: the federation offers no replica now (%s); asking again", path, exc
                    )
                    await trio.sleep(self._retry_delay(rounds))
                    replicas = None
                    tried.clear()
        finally:
            view.release()
        return buffer

    def _usable_target(self, path: str) -> str | None:
        url = self._targets.get(path)
        if url is not None and url in self._penalties:
            self._targets.forget(path)
            return None
        return url

    def _count_retry(self) -> None:
        transaction = _TRANSACTION.get()
        if transaction is not None:
            transaction.retries += 1
        self.observer.event("retry")

    def _count_failover(self) -> None:
        transaction = _TRANSACTION.get()
        if transaction is not None:
            transaction.failovers += 1
        self.observer.event("failover")

    def target(self, path: str) -> str | None:
        """The remembered redirect target of ``path`` (a signed URL: redact it), or None."""
        return self._targets.get(path)

    @property
    def penalty(self) -> float:
        """Seconds an endpoint that failed is passed over."""
        return self._penalties.penalty

    def forget_target(self, path: str) -> None:
        """Ask the federation again at the next read of ``path``."""
        self._targets.forget(path)

    def remembered_targets(self) -> int:
        """The number of files whose redirect target is remembered now."""
        return len(self._targets)

    async def _replicas(self, path: str, *, fallback: str | None) -> list[str]:
        """The file's replica URLs from the federation's metalink, in its order.

        Without a metalink (the federation has none, or it failed), the
        federation's current redirect target (``fallback``, or a fresh one).
        """
        replicas = await self.metalink(path)
        if replicas:
            self.observer.event("metalink")
            return replicas
        if fallback is None:
            fallback = await self._locate(path)
        return [fallback]

    # -- choosing among the replicas (net/replicachoice.py) ------------------

    async def metalink(self, path: str) -> list[str]:
        """The replica URLs the federation's metalink offers for ``path``, in its order.

        Empty if it offers no metalink (or it failed). One request to the federation.
        """
        url = url_for(self.base_url, path) + "?metalink"
        headers = {"Accept": METALINK_ACCEPT, **self._headers_for(url)}
        try:
            with self._deadline(f"metalink of {path}"), map_exceptions(f"metalink of {path}"):
                response = await self._client.get(url, headers=headers)
            if response.status_code == 200:
                return parse_metalink(response.content)
            log.info("no metalink for %s (HTTP %d)", path, response.status_code)
        except (UpstreamError, UpstreamTimeout, BadResponse) as exc:
            log.info("no metalink for %s: %s", path, exc)
        return []

    @property
    def transport(self) -> Transport:
        return self._transport

    def prefer(self, path: str, url: str) -> None:
        """Read ``path`` from ``url`` (a replica the federation offered) until it fails or
        is due for renewal, as if the federation had redirected there."""
        if url not in self._penalties:
            self._targets.remember(path, url)

    def penalised(self, url: str) -> bool:
        """Whether the endpoint of ``url`` failed recently."""
        return url in self._penalties

    async def read_from(
        self,
        url: str,
        path: str,
        start: int,
        end: int,
        size: int,
        *,
        lane: Lane = Lane.BACKGROUND,
        fallback: bool = True,
    ) -> Buffer:
        """Bytes ``[start, end)`` of ``path`` from the replica ``url`` the federation offered.

        Checked like every read (size, Content-Range). If that replica fails, it is
        penalised and the bytes are read as :meth:`read` does (the federation's target,
        then the metalink): the caller gets the bytes or read()'s error. Without
        ``fallback`` (a probe), the replica's failure is raised as an UpstreamError.
        """
        end = min(end, size)
        if start >= end:
            return b""
        if url not in self._penalties:
            buffer = new_buffer(end - start)
            view = memoryview(buffer)
            try:

                async def step(hop_url: str, _hop: int) -> int:
                    return await self._get_range(hop_url, start, end, size, view, lane)

                with self._deadline(f"read {path} [{start}, {end})"):
                    got = await follow(url, step, what=f"GET {path!r}")
                if got == end - start:
                    return buffer
            except TargetFailed as failed:
                self._penalties.penalise(failed.url)
                self._targets.forget(path)
                log.warning(
                    "replica failed, reading through the federation: %s",
                    failed.error,
                    extra={"event.action": "failover", "url.path": path},
                )
            except (BadResponse, UpstreamError, UpstreamTimeout) as exc:
                self._penalties.penalise(url)
                log.warning("replica failed, reading through the federation: %s", exc)
            finally:
                view.release()
        if not fallback:
            raise UpstreamError(f"{path}: replica {redact_url(url)} did not answer")
        return await self.read(path, start, end, size, lane=lane)

    async def _locate(self, path: str) -> str:
        """Where the federation redirects a GET of ``path`` now (without reading data)."""

        async def step(url: str, _hop: int) -> str:
            if origin(url) != self._origin:
                return url
            with map_exceptions(f"HEAD {path}"):
                response = await self._client.head(url, headers=self._headers_for(url))
            status = response.status_code
            if status not in REDIRECTS:
                raise status_error(status, f"HEAD {path}")
            raise Redirect(redirect_target(url, response.headers.get("Location"), status))

        return await follow(url_for(self.base_url, path), step, what=f"HEAD {path!r}")

    @contextmanager
    def _deadline(self, what: str, extra: float = 0.0) -> Iterator[None]:
        try:
            with trio.fail_after(self.budget + extra):
                yield
        except trio.TooSlowError:
            took = self.budget + extra
            raise UpstreamTimeout(f"{what}: no answer within {took:g} s") from None

    async def _read_following(
        self, path: str, start: int, end: int, size: int, into: memoryview, lane: Lane
    ) -> tuple[int | None, str]:
        """Ranged GET on the federation, following its redirects to the data.

        Returns (bytes read, the URL that served them), or (None, URL) when the
        federation redirects to an endpoint that failed recently. Concurrent reads
        of the file wait (in :meth:`_read`) until the redirect is known, then read
        from the same endpoint at once, in parallel with this one.
        """
        located = trio.Event()
        owner = self._locating.setdefault(path, located) is located

        async def step(url: str, _hop: int) -> tuple[int | None, str]:
            if origin(url) != self._origin:
                if url in self._penalties:
                    return None, url
                if owner and not located.is_set():
                    self._targets.remember(path, url)
                    located.set()
            return await self._get_range(url, start, end, size, into, lane), url

        try:
            return await follow(url_for(self.base_url, path), step, what=f"GET {path!r}")
        finally:
            if owner:
                del self._locating[path]
                located.set()

    async def _get_range(
        self, url: str, start: int, end: int, size: int, into: memoryview, lane: Lane
    ) -> int:
        """GET ``[start, end)`` of ``url`` into ``into`` through the transport.

        Raises :class:`Redirect` for a 3xx. An endpoint's failure is a
        :class:`TargetFailed` (with the good bytes read before it); the federation's
        own answer that is no data raises its davfed error. Each exchange is one
        log record (:func:`~davfed_fuse.net.observe.log_exchange`) and goes to the
        observer; all those of one :meth:`read` share its ``trace.id``.
        """
        transaction = _TRANSACTION.get() or Transaction.new("", readahead=lane is Lane.BACKGROUND)
        federation = origin(url) == self._origin
        headers = self._headers_for(url) if federation else None
        reply = Reply()
        started = trio.current_time()
        got = 0
        error: str | None = "cancelled"  # unless it ends one of the ways below
        if not federation:
            self.observer.begin(lane is Lane.BACKGROUND)
        try:
            got = await self._transport.get_range(
                url, start, end, size, into, lane=lane, headers=headers, reply=reply
            )
            error = None
            return got
        except Redirect:
            error = None if federation else "moved"
            if federation:
                self.observer.event("redirect")
            raise
        except TargetFailed as failed:
            got, error = failed.got, str(failed.error)
            if federation and not failed.in_body:
                raise failed.error from None  # the federation's answer that is no data
            raise
        finally:
            took = trio.current_time() - started
            exchange = Exchange(
                transaction, url, start, end, got, reply.status, error, took, federation
            )
            log_exchange(exchange)
            self.observer.exchange(exchange)
            if self.on_transfer is not None and error != "cancelled":
                # A redirect (a DPM head node, a dCache door) is one round trip.
                self.on_transfer(url, got, took, None if error in (None, "moved") else error)
