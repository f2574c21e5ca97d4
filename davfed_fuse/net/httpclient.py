"""The httpx side of the network layer: metadata requests and their errors.

Owns: the httpx client davfed's metadata requests (PROPFIND, metalinks, the
federation's HEAD) go over, whose connections follow credential renewal
(:class:`CredentialTransport`, by the same :class:`TLSGeneration` the ranged-GET
transport compares), and the one table that turns httpx's exceptions into
davfed's (:func:`map_exceptions`, after httpcore's): nothing above the network
layer sees an httpx exception. File data never goes through httpx
(:mod:`davfed_fuse.net.transport` reads it).
Must not import: pyfuse3, the cache, the daemon.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx
import trio

from davfed_fuse.errors import BadResponse, DavfedError
from davfed_fuse.net.credentials import TLSGeneration
from davfed_fuse.net.http import connection_error, has_tls_error
from davfed_fuse.net.proxylist import ProxyList, proxy_fault

log = logging.getLogger(__name__)

Translation = Callable[[Exception, str], Exception]

#: httpx's exceptions as davfed's, most specific first. ``what`` names the request.
EXCEPTIONS: tuple[tuple[type[Exception], Translation], ...] = (
    (httpx.TimeoutException, lambda exc, what: connection_error(exc, what, timed_out=True)),
    (httpx.TransportError, connection_error),  # refused, reset, TLS (EACCES if refused)
    (httpx.HTTPError, lambda exc, what: BadResponse(f"{what}: {type(exc).__name__}: {exc}")),
    (httpx.InvalidURL, lambda exc, what: BadResponse(f"{what}: {exc}")),
)


def translate(exc: Exception, what: str) -> Exception:
    """The davfed error for ``exc`` (by :data:`EXCEPTIONS`); ``exc`` itself if none applies."""
    if isinstance(exc, DavfedError):
        return exc
    for kind, translation in EXCEPTIONS:
        if isinstance(exc, kind):
            return translation(exc, what)
    return exc


@contextmanager
def map_exceptions(what: str) -> Iterator[None]:
    """Raise httpx's exceptions inside the block as davfed's (see :func:`translate`)."""
    try:
        yield
    except Exception as exc:
        error = translate(exc, what)
        if error is exc:
            raise
        raise error from exc


def metadata_client(
    tls: TLSGeneration,
    *,
    timeout: float,
    connect_timeout: float,
    connections: int,
    proxy: str | None = None,
    proxies: ProxyList | None = None,
    user_agent: str = "davfed",
) -> httpx.AsyncClient:
    """An httpx client for metadata: at most ``connections`` kept-alive connections per host.

    Its connections present the mount's current X.509 credential (a renewal gets
    new connections); requests go through ``proxies`` (failing over as the list
    says, :class:`ProxiedTransport`) or ``proxy`` (None: direct). It follows no
    redirect itself: :func:`davfed_fuse.net.http.follow` does.
    """
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=connections)
    transport: httpx.AsyncBaseTransport
    if proxies is not None:
        transport = ProxiedTransport(tls, proxies, limits=limits)
    else:
        transport = CredentialTransport(tls, limits=limits, proxy=proxy)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=limits,
        follow_redirects=False,
        headers={"User-Agent": user_agent},
        transport=transport,
    )


#: httpx's errors that mean the proxy (or the way to it) failed, before any answer.
_PROXY_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.ProxyError,
    httpx.RemoteProtocolError,
)


class ProxiedTransport(httpx.AsyncBaseTransport):
    """Metadata requests through the mount's :class:`ProxyList`, failing over as it says.

    One :class:`CredentialTransport` per proxy. A request the proxy fails (no
    answer, or an answer marked as the proxy's error) is counted against it and
    sent again through the next proxy of the list: metadata requests (PROPFIND,
    HEAD, GET of a metalink) are idempotent. When every proxy failed, the last
    failure is the answer.
    """

    def __init__(self, tls: TLSGeneration, proxies: ProxyList, *, limits: httpx.Limits) -> None:
        self._tls = tls
        self._limits = limits
        self.proxies = proxies
        self._pools: dict[str | None, CredentialTransport] = {}

    def _pool(self, proxy: str | None) -> CredentialTransport:
        pool = self._pools.get(proxy)
        if pool is None:
            pool = self._pools[proxy] = CredentialTransport(
                self._tls, limits=self._limits, proxy=proxy
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        order = self.proxies.attempt_order()
        for number, proxy in enumerate(order, 1):
            last = number == len(order)
            try:
                response = await self._pool(proxy).handle_async_request(request)
            except _PROXY_ERRORS as exc:
                if proxy is None or last:
                    raise
                self.proxies.fail(proxy, f"{type(exc).__name__}: {exc}")
                continue
            fault = (
                None if proxy is None else proxy_fault(response.status_code, response.headers.get)
            )
            if fault is None or last:
                return response
            await response.aclose()
            self.proxies.fail(proxy, fault)
        raise AssertionError("unreachable: the last proxy's answer is returned")

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its transport when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], Awaitable[None]]):
        self._inner = inner
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


class CredentialTransport(httpx.AsyncBaseTransport):
    """An httpx connection pool that always presents the current X.509 credential.

    TLS authenticates a connection once, in its handshake, and httpx keeps
    connections alive: after a renewal (another user's proxy, new VOMS
    attributes, or an expired proxy replaced), old connections would go on
    speaking as the old credential. So when the :class:`TLSGeneration` changes,
    requests go to a new pool made with the new TLS context, and the old pool is
    closed as soon as its last response is closed (the same rule the ranged-GET
    transport applies to its connections).
    """

    def __init__(
        self,
        tls: TLSGeneration,
        *,
        limits: httpx.Limits,
        proxy: httpx.Proxy | str | None = None,
    ) -> None:
        self._tls = tls
        self._limits = limits
        self._proxy = proxy
        self._generation, context = tls.current()
        self._pool = self._new_pool(context)
        self._in_flight: dict[httpx.AsyncHTTPTransport, int] = {self._pool: 0}
        self.pools_made = 1

    def _new_pool(self, context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(verify=context, limits=self._limits, proxy=self._proxy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        generation, context = self._tls.current()
        if generation != self._generation:
            retired = self._pool
            self._generation = generation
            self._pool = self._new_pool(context)
            self._in_flight[self._pool] = 0
            self.pools_made += 1
            log.debug("new TLS connections for the renewed credential")
            await self._close_if_idle(retired)
        pool = self._pool
        if not self._tls.renews:  # nothing to renew in TLS: no bookkeeping
            try:
                return await pool.handle_async_request(request)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                await self._diagnose(pool, request, exc)
                raise
        self._in_flight[pool] += 1
        try:
            response = await pool.handle_async_request(request)
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
            try:
                await self._diagnose(pool, request, exc)
            finally:
                await self._release(pool)
            raise
        except BaseException:
            await self._release(pool)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, lambda: self._release(pool))
        return response

    async def _diagnose(
        self, pool: httpx.AsyncHTTPTransport, request: httpx.Request, exc: httpx.TransportError
    ) -> None:
        """Raise the TLS refusal behind a connection that broke for no stated reason.

        With TLS 1.3 the server checks the client certificate after the client
        considers the handshake done, so a refusal ("certificate required",
        "certificate expired", "unknown CA") can arrive while the request is
        being written. The write then fails, the TLS stream counts as broken,
        and the server's alert, which says why, is never read. One request with
        no body to write (a HEAD) reads it; its error is raised instead.
        """
        if request.url.scheme != "https" or has_tls_error(exc):
            return
        agent = request.headers.get("User-Agent", "")
        probe = httpx.Request(
            "HEAD", request.url, headers={"User-Agent": agent}, extensions=request.extensions
        )
        try:
            response = await pool.handle_async_request(probe)
        except httpx.TransportError as found:
            if has_tls_error(found):
                raise  # keeps its own cause: the server's alert
            return
        await response.aclose()

    async def _release(self, pool: httpx.AsyncHTTPTransport) -> None:
        if pool in self._in_flight:  # not yet closed by aclose()
            self._in_flight[pool] -= 1
            if pool is not self._pool:
                await self._close_if_idle(pool)

    async def _close_if_idle(self, pool: httpx.AsyncHTTPTransport) -> None:
        if self._in_flight.get(pool) == 0:
            del self._in_flight[pool]
            with trio.CancelScope(shield=True):
                await pool.aclose()

    async def aclose(self) -> None:
        pools, self._in_flight = list(self._in_flight), {}
        with trio.CancelScope(shield=True):
            for pool in pools:
                await pool.aclose()
