"""The one ranged-GET transport: every read of a file's bytes goes through it.

Owns: the kept-alive HTTP/1.1 connections that carry data (idle lists per origin,
lane and credential generation), the thread limiter of transfers, and reading a
body straight into the caller's buffer. Ranged GETs to the federation (its 302,
or its data if it serves them) and to the storage endpoints it redirects to both
go through :meth:`Transport.get_range`; the rules deciding what an answer means
are in :mod:`davfed_fuse.net.http`.
Must not import: pyfuse3, httpx, or davfed modules but ``errors``, ``redaction``,
``net.http`` and ``net.credentials``.

Why threads and ``http.client``: a transfer's body is read with
``socket.recv_into`` into its destination, in a worker thread that releases the GIL
while it waits, about 0.4 CPU s per GiB. Read through httpx on the event loop, the
same body cost three copies and an event-loop trip per socket read, and capped cold
reads at about 0.37 GB/s on the 2-core development VM with the event loop saturated
(performance-notes.md: "measure your own read path").

Lanes: a reader's request (:attr:`Lane.FOREGROUND`) and read-ahead
(:attr:`Lane.BACKGROUND`) keep separate idle connections, so that a reader finds
a warmed-up connection instead of queueing behind read-ahead's large transfers.

Errors: every failure is a :class:`~davfed_fuse.net.http.TargetFailed` carrying the
number of good bytes that arrived before it (the caller resumes there on another
replica); a 3xx answer is a :class:`~davfed_fuse.net.http.Redirect`. Connections
are reused only after a body was read to its end, and only while the credential
they were made with is current; anything else closes them.
"""

from __future__ import annotations

import enum
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import trio

from davfed_fuse.errors import BadResponse, IntegrityError, UpstreamError
from davfed_fuse.net.credentials import TLSGeneration
from davfed_fuse.net.http import (
    SMALL_BODY,
    BodyPlan,
    Redirect,
    TargetFailed,
    body_complete,
    body_failed,
    body_too_long,
    connection_error,
    plan_body,
)
from davfed_fuse.net.proxies import Proxy
from davfed_fuse.net.proxylist import ProxyList, proxy_fault
from davfed_fuse.redaction import redact_url

log = logging.getLogger(__name__)

#: Bytes per ``recv_into``: between two, a cancelled transfer notices and stops.
CHUNK = 1 << 20
#: Bytes per second a caching proxy is assumed to fill at least (see :meth:`Transport.allowance`).
PROXY_FILL_RATE = 2 << 20
#: The most :meth:`Transport.allowance` adds to a first-byte wait, seconds.
MAX_FILL_WAIT = 600.0


class Reply:
    """What the caller of :meth:`Transport.get_range` may learn of the answer: its status."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0  # 0: no answer arrived


class Lane(enum.Enum):
    """Whose transfer it is: a reader waiting for it, or read-ahead."""

    FOREGROUND = "foreground"
    BACKGROUND = "background"


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or EOF waiting (poll, not select: any fd number)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True, slots=True)
class _PoolKey:
    """The connections interchangeable for a request."""

    scheme: str
    host: str
    port: int
    generation: int  # of the credential a TLS connection was made with (0: plain http)
    lane: Lane
    proxy: Proxy  # the proxy the connection goes to (None: straight to the server)


class _Call:
    """One transfer as its worker thread sees it: abandoned when the caller is cancelled."""

    __slots__ = ("abandoned", "reply")

    def __init__(self, reply: Reply | None) -> None:
        self.abandoned = False
        self.reply = reply


class _Abandoned(Exception):
    pass


class _ProxyFailed(Exception):
    """The proxy failed this transfer (its ``failed.got`` good bytes stay): try the next."""

    def __init__(self, failed: TargetFailed) -> None:
        super().__init__(str(failed.error))
        self.failed = failed


@dataclass(frozen=True, slots=True)
class _Request:
    """What the worker thread needs to send one ranged GET."""

    url: str
    start: int
    end: int
    size: int
    headers: Mapping[str, str]
    generation: int
    context: ssl.SSLContext | None
    lane: Lane


class Transport:
    """Ranged GETs over kept-alive HTTP/1.1 connections, each lane with its own pool.

    Each lane keeps at most ``connections`` idle connections per origin. TLS
    connections present the context of ``tls`` and are not reused once its
    generation changes (a renewed X.509 proxy). ``proxy`` (``http://host:port``)
    carries every request: https through a CONNECT tunnel. ``connect_timeout``
    bounds connecting (and the TLS handshake), ``timeout`` every wait for data.

    ``proxies`` (a :class:`ProxyList`, which ``proxy`` makes of one URL) fail over
    *inside* one transfer: when the proxy fails (the rules are in
    :mod:`davfed_fuse.net.proxylist`), the bytes it delivered stay and the rest of
    the range is asked through the next proxy of the list; the caller sees one
    complete range or, every proxy having failed, a failure of the endpoint.
    Through a proxy, the wait for an answer's head also gets :meth:`allowance`.
    """

    def __init__(
        self,
        *,
        tls: TLSGeneration | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        connections: int = 8,
        proxy: str | None = None,
        proxies: ProxyList | None = None,
        fill_rate: float = PROXY_FILL_RATE,
        user_agent: str = "davfed",
    ) -> None:
        self._tls = tls or TLSGeneration()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._connections = connections
        self.proxies = proxies if proxies is not None else (ProxyList(proxy) if proxy else None)
        self.fill_rate = fill_rate
        self._user_agent = user_agent
        self._idle: dict[_PoolKey, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        # Both lanes' transfers, with room for abandoned ones finishing.
        self._limiter = trio.CapacityLimiter(4 * connections + 8)
        self.connections_made = 0
        #: Called from the worker thread as ``(url, seconds)`` when an answer's head has
        #: arrived: the time to first byte (replica choice's latency figure).
        self.on_response: Callable[[str, float], None] | None = None

    async def get_range(
        self,
        url: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
        *,
        lane: Lane = Lane.FOREGROUND,
        headers: Mapping[str, str] | None = None,
        reply: Reply | None = None,
    ) -> int:
        """GET ``[start, end)`` of ``url`` (a file of ``size`` bytes) into ``into``.

        Returns the number of bytes read; ``headers`` are sent besides Range;
        ``reply.status`` gets the answer's HTTP status, if one arrived.
        Raises :class:`Redirect` for a 3xx and :class:`TargetFailed` for any other
        failure. Cancellation: returns at once; the worker thread stops at its next
        chunk (or its read timeout) and closes its connection; bytes it still writes
        go to ``into`` only, which the cancelled caller no longer reads.
        """
        generation, context = 0, None
        if url.startswith("https:"):
            generation, context = self._tls.current()
        request = _Request(url, start, end, size, headers or {}, generation, context, lane)
        call = _Call(reply)
        done = False
        try:
            got: int = await trio.to_thread.run_sync(
                self._get,
                request,
                into,
                call,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
            done = True
            return got
        finally:
            if not done:
                call.abandoned = True

    def allowance(self, start: int) -> float:
        """Extra seconds to wait for the head of a range at ``start`` through a proxy.

        A caching proxy that fetches whole objects (squid's ``range_offset_limit
        none``) sends nothing until its own fetch from the origin has reached
        ``start``: a cold read near the end of a large file waits for the cache to
        fill. The wait gets ``start / fill_rate`` seconds more (at most
        :data:`MAX_FILL_WAIT`), so a filling cache is not taken for a dead
        endpoint; once bytes flow, each wait for more is ``timeout`` again.
        """
        if self.proxies is None or self.proxies.current() is None:
            return 0.0
        return min(MAX_FILL_WAIT, start / self.fill_rate)

    def close(self) -> None:
        """Close the idle connections (transfers still running close theirs)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- the worker thread's side ----------------------------------------------

    def _get(self, request: _Request, into: memoryview, call: _Call) -> int:
        """The transfer, through the proxies of the list in turn while they fail."""
        proxies = self.proxies
        if proxies is None:
            return self._get_via(None, request, into, call)
        done = 0  # good bytes delivered by proxies that failed afterwards
        last: TargetFailed | None = None
        for proxy in proxies.attempt_order():
            if call.abandoned:
                raise _Abandoned
            part = replace(request, start=request.start + done)
            try:
                return done + self._get_via(proxy, part, into[done:], call)
            except _ProxyFailed as exc:
                failed = exc.failed
                if failed.trusted:
                    done += failed.got
                proxies.fail(proxy, str(failed.error))
                last = failed
                if request.start + done >= request.end:
                    return done
            except TargetFailed as failed:  # the endpoint's own failure
                got = done + (failed.got if failed.trusted else 0)
                raise TargetFailed(failed.error, failed.url, got, in_body=failed.in_body) from None
        assert last is not None  # every proxy failed: now it counts against the endpoint
        raise TargetFailed(last.error, last.url, done, in_body=last.in_body)

    def _get_via(self, proxy: Proxy, request: _Request, into: memoryview, call: _Call) -> int:
        """One try of the transfer, through ``proxy`` (None: straight to the server).

        Through a proxy, a failure that is the proxy's raises :class:`_ProxyFailed`:
        connecting, timeouts, a body cut short or too long, an answer marked as the
        proxy's own error, a range other than the one asked for. A status the
        server sent (passed through) stays the server's :class:`TargetFailed`.
        """
        url = request.url
        parts = urlsplit(url)
        scheme = parts.scheme
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise TargetFailed(BadResponse(f"unusable URL {redact_url(url)}"), url) from None
        key = _PoolKey(scheme, parts.hostname or "", port, request.generation, request.lane, proxy)
        if proxy is not None and scheme == "http":
            target = url  # absolute form, to the proxy
        else:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            return self._exchange(key, request, target, into, call)
        except TargetFailed as failed:
            if proxy is None or failed.from_server:
                raise
            raise _ProxyFailed(failed) from None

    def _exchange(
        self, key: _PoolKey, request: _Request, target: str, into: memoryview, call: _Call
    ) -> int:
        url, start, end, size = request.url, request.start, request.end, request.size
        headers = {
            **request.headers,
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
        }
        what = f"GET {redact_url(url)}"
        head_timeout = self.timeout
        if key.proxy is not None:
            head_timeout += min(MAX_FILL_WAIT, start / self.fill_rate)
        sent = time.monotonic()
        conn, response = self._send(key, request.context, target, headers, url, what, head_timeout)
        if self.on_response is not None:
            self.on_response(url, time.monotonic() - sent)
        if call.reply is not None:
            call.reply.status = response.status
        if key.proxy is not None:
            fault = proxy_fault(response.status, response.getheader)
            if fault is not None:
                self._finish(key, conn, response, read_small=True)
                raise TargetFailed(UpstreamError(f"{what}: {fault}"), url)
        try:
            plan = plan_body(response.status, response.getheader, url, start, end, size)
        except Redirect:
            self._finish(key, conn, response, read_small=True)
            raise
        except IntegrityError as exc:  # a range or size other than asked: a broken cache?
            self._finish(key, conn, response, read_small=True)
            raise TargetFailed(exc, url) from None
        except Exception as exc:
            self._finish(key, conn, response, read_small=True)
            raise TargetFailed(exc, url, from_server=True) from None
        if plan is None:
            self._finish(key, conn, response, read_small=True)
            return 0
        try:
            sock = conn.sock

            def flowing() -> None:  # bytes arrive: from now on, every wait is `timeout`
                if sock is not None and head_timeout != self.timeout:
                    sock.settimeout(self.timeout)

            got = self._fill(response, into[: end - start], plan, url, call, flowing)
        except BaseException:
            conn.close()
            raise
        self._finish(key, conn, response)
        return got

    def _send(
        self,
        key: _PoolKey,
        context: ssl.SSLContext | None,
        target: str,
        headers: dict[str, str],
        url: str,
        what: str,
        head_timeout: float,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on an idle connection (again on a new one if the server had
        closed it meanwhile) or a new one; return the connection and its answer's head."""
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(key, context)
                assert conn.sock is not None
                conn.sock.settimeout(head_timeout)
                conn.request("GET", target, headers=headers)
                # The head_timeout stays until the body's first bytes (see _fill).
                return conn, conn.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                if conn is not None:
                    conn.close()
                if reused:
                    continue  # a kept-alive connection the server had closed: once more
                raise TargetFailed(UpstreamError(f"{what}: connection closed"), url) from None
            except (ValueError, http.client.InvalidURL) as exc:  # spaces, control characters
                if conn is not None:
                    conn.close()
                raise TargetFailed(BadResponse(f"{what}: {exc}"), url) from None
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                raise TargetFailed(connection_error(exc, what), url) from exc

    def _connect(self, key: _PoolKey, context: ssl.SSLContext | None) -> http.client.HTTPConnection:
        scheme, host, port = key.scheme, key.host, key.port
        conn: http.client.HTTPConnection
        proxy = urlsplit(key.proxy) if key.proxy is not None else None
        if proxy is not None:  # connect to the proxy; https goes through a CONNECT tunnel
            host, port, tunnel = proxy.hostname or "", proxy.port or 80, (host, port)
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=context
            )
            if proxy is not None:
                conn.set_tunnel(*tunnel)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        with self._lock:
            self.connections_made += 1
        log.debug(
            "new connection to %s:%d for %s transfers",
            key.host,
            key.port,
            key.lane.value,
        )
        return conn

    def _checkout(self, key: _PoolKey) -> http.client.HTTPConnection | None:
        """An idle connection of the pool that the server has not closed, or None."""
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()  # readable while idle: the server closed it (or sent junk)

    def _finish(
        self,
        key: _PoolKey,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        *,
        read_small: bool = False,
    ) -> None:
        """Return the connection to its pool if its answer was read to the end, else close it."""
        try:
            if read_small and response.length is not None and response.length <= SMALL_BODY:
                response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            return
        if not response.isclosed() or response.will_close:
            conn.close()
            return
        with self._lock:
            if key.scheme == "https" and not self._tls.is_current(key.generation):
                idle = None  # made with a credential since renewed
            else:
                idle = self._idle.setdefault(key, [])
            if idle is not None and len(idle) < self._connections:
                idle.append(conn)
                return
        conn.close()

    @staticmethod
    def _fill(
        response: http.client.HTTPResponse,
        into: memoryview,
        plan: BodyPlan,
        url: str,
        call: _Call,
        flowing: Callable[[], None],
    ) -> int:
        """Read the body into ``into`` as ``plan`` says; the number of bytes read.

        Until the first chunk has arrived, waits are as long as the head's (a
        filling cache may send its head early and its body late); ``flowing`` is
        called then, and sets the wait back to ``timeout``.

        The body is read in chunks of :data:`CHUNK` bytes, each read whole or not at
        all (a buffered read): after a failure, ``got`` counts the whole chunks read,
        a few bytes less than arrived, never more.
        """
        want = len(into)
        filled = 0
        skip = plan.skip
        try:
            if skip:
                scratch = memoryview(bytearray(min(skip, CHUNK)))
                while skip:
                    n = response.readinto(scratch[: min(skip, CHUNK)])
                    if not n:
                        break
                    skip -= n
                    flowing()
            while filled < want and not skip:
                if call.abandoned:
                    raise _Abandoned
                n = response.readinto(into[filled : filled + CHUNK])
                if not n:
                    break
                filled += n
                flowing()
            if plan.exact and filled == want and response.read(1):
                raise body_too_long(url, want)
        except TimeoutError as exc:
            raise body_failed(url, filled, exc, timed_out=True) from None
        except http.client.IncompleteRead:
            pass  # the body ended early: reported below
        except (OSError, http.client.HTTPException) as exc:
            raise body_failed(url, filled, exc, timed_out=False) from exc
        return body_complete(url, filled, want)
