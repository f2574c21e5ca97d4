"""Ranged GETs from storage endpoints: blocking HTTP/1.1 in worker threads, read
straight into the caller's buffer.

Owns: the kept-alive connections to storage endpoints (idle lists per origin, TLS
credential generation and pool), the thread limiter of endpoint transfers, and the
rules deciding whether an answer carries the bytes asked for (:func:`plan_body`,
which the federation's own httpx path in :mod:`davfed_fuse.net.federation` shares).
Must not import: pyfuse3, httpx, or davfed modules but ``errors`` and ``signedurl``.

Why threads and ``http.client``: a transfer's body is read with
``socket.recv_into`` into its destination, in a worker thread that releases the GIL
while it waits, about 0.4 CPU s per GiB. Read through httpx on the event loop, the
same body cost three copies and an event-loop trip per socket read, and capped cold
reads at about 0.37 GB/s on the 2-core development VM with the event loop saturated
(performance-notes.md: "measure your own read path").

Errors: every failure of an endpoint is a :class:`TargetFailed` carrying the number
of good bytes that arrived before it (the caller resumes there on another replica);
a 3xx answer is a :class:`Redirect`. Connections are reused only after a body was
read to its end; anything else closes them.
"""

from __future__ import annotations

import http.client
import logging
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import trio

from davfed_fuse.errors import (
    BadResponse,
    Forbidden,
    IntegrityError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.redaction import redact_url

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
#: Bytes per ``recv_into``: between two, a cancelled transfer notices and stops.
CHUNK = 1 << 20
#: A redirect's or error's body up to this size is read, keeping the connection.
SMALL_BODY = 64 << 10


class TargetFailed(Exception):
    """A replica failed in a way another replica may not: try the next one.

    ``got`` bytes of the asked range had arrived intact before the failure.
    """

    def __init__(self, error: Exception, url: str, got: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.url = url
        self.got = got


class Redirect(Exception):
    """The server answered 3xx: the data is at ``location`` (absolute, http or https)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True, slots=True)
class BodyPlan:
    """How to read an answer's body into the range asked for."""

    skip: int  # body bytes before the first byte asked for (a 200 with the whole file)
    exact: bool  # the body must be exactly the range (a 206); else reading stops when full


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes a-b/total`` -> (a, b + 1, total or None). Raises BadResponse."""
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise BadResponse(f"unreadable Content-Range {value!r}")
    first, last, total = match.groups()
    return int(first), int(last) + 1, None if total == "*" else int(total)


def body_failed(url: str, got: int, exc: BaseException, *, timed_out: bool) -> TargetFailed:
    """The failed replica whose body broke off (or stalled) after ``got`` good bytes."""
    if timed_out:
        return TargetFailed(UpstreamTimeout(f"reading {redact_url(url)}: timed out"), url, got)
    return TargetFailed(UpstreamError(f"reading {redact_url(url)}: {exc!r}"), url, got)


def body_complete(url: str, got: int, want: int) -> int:
    """``got``, if the body brought all ``want`` bytes; else raise its failed replica."""
    if got < want:
        message = f"{redact_url(url)}: body ended after {got} of {want} bytes"
        raise TargetFailed(IntegrityError(message), url, got)
    return got


def redirect_target(url: str, location: str | None, status: int) -> str:
    """The absolute URL a 3xx answer from ``url`` points at; BadResponse if unusable."""
    if not location:
        raise BadResponse(f"{status} from {redact_url(url)} without Location")
    target = urljoin(url, location)
    if urlsplit(target).scheme not in ("http", "https"):
        raise BadResponse(f"redirect from {redact_url(url)} to a non-HTTP URL")
    return target


def status_error(status: int, what: str) -> Exception:
    """The davfed error for an HTTP status that carries no data."""
    message = f"{what}: HTTP {status}"
    if status in (404, 410):
        return NotFound(message)
    if status in (401, 403):
        return Forbidden(message)
    if status in (408, 504):
        return UpstreamTimeout(message)
    return UpstreamError(message)


def plan_body(
    status: int,
    header: Callable[[str], str | None],
    url: str,
    start: int,
    end: int,
    size: int,
) -> BodyPlan | None:
    """Decide whether an answer to ``Range: bytes=start-(end-1)`` of a file of ``size``
    bytes carries them, and how to read them. ``header`` looks a response header up.

    Returns None when there is nothing to read (416 for a range at or past EOF).
    Raises :class:`Redirect` for a 3xx; IntegrityError when the server's idea of the
    file's size or of the range sent disagrees with the federation's; BadResponse
    for an encoded body; the error of :func:`status_error` otherwise.
    """
    if status in (301, 302, 303, 307, 308):
        raise Redirect(redirect_target(url, header("Location"), status))
    if status in (200, 206):
        encoding = (header("Content-Encoding") or "identity").lower()
        if encoding != "identity":
            raise BadResponse(f"{redact_url(url)} sent {encoding}-encoded data")
    if status == 206:
        first, stop, total = parse_content_range(header("Content-Range") or "")
        if total is not None and total != size:
            raise IntegrityError(f"{redact_url(url)} has {total} bytes, the federation says {size}")
        if first != start or stop != end:
            raise IntegrityError(f"{redact_url(url)} sent bytes {first}-{stop} for {start}-{end}")
        return BodyPlan(skip=0, exact=True)
    if status == 200:
        length = header("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise IntegrityError(
                f"{redact_url(url)} has {length} bytes, the federation says {size}"
            )
        return BodyPlan(skip=start, exact=False)
    if status == 416 and start >= size:
        return None
    raise status_error(status, f"GET {redact_url(url)}")


#: The TLS alerts by which a server refuses a client's certificate, and what they mean.
_CLIENT_CERT_ALERTS = (
    ("CERTIFICATE_REQUIRED", "the server requires a client certificate and none was sent"),
    ("CERTIFICATE_EXPIRED", "the server rejected the client certificate: it has expired"),
    ("UNKNOWN_CA", "the server rejected the client certificate: its CA is not trusted there"),
    ("CERTIFICATE_REVOKED", "the server rejected the client certificate: it is revoked"),
    ("UNSUPPORTED_CERTIFICATE", "the server rejected the client certificate as unsupported"),
    ("BAD_CERTIFICATE", "the server rejected the client certificate as bad"),
    ("CERTIFICATE_UNKNOWN", "the server rejected the client certificate"),
    ("ACCESS_DENIED", "the server denied access in the TLS handshake"),
    ("HANDSHAKE_FAILURE", "the server refused the TLS handshake"),
)


def tls_reason(exc: BaseException) -> tuple[str, str | None] | None:
    """The TLS failure behind ``exc``, if it is one: (reason, what it means, if known).

    The meaning is known for a server's alert refusing our certificate, and for
    our own failure to verify the server's certificate.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = getattr(seen, "verify_message", None) or str(seen)
            return detail, (
                f"cannot verify the server's certificate ({detail}); "
                "is its CA in capath= or X509_CERT_DIR?"
            )
        if isinstance(seen, ssl.SSLError) or "ALERT" in str(seen).upper():
            reason = getattr(seen, "reason", None) or str(seen)  # set by OpenSSL only
            for alert, meaning in _CLIENT_CERT_ALERTS:
                if alert in reason.upper():
                    return reason, meaning
            return reason, None
        seen = seen.__cause__ or seen.__context__
    return None


def connection_error(exc: BaseException, what: str, *, timed_out: bool = False) -> Exception:
    """The davfed error for a failed connection: a refused TLS handshake is EACCES.

    A server that refuses our client certificate (or that we cannot verify)
    gives :class:`Forbidden` and one log line saying why; another TLS failure
    is an :class:`UpstreamError`; a timeout is an :class:`UpstreamTimeout`.
    """
    if timed_out or isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{what}: {type(exc).__name__}")
    found = tls_reason(exc)
    if found is None:
        return UpstreamError(f"{what}: {type(exc).__name__}: {exc}")
    reason, meaning = found
    if meaning is None:
        log.error("%s: the TLS handshake failed: %s", what, reason)
        return UpstreamError(f"{what}: TLS handshake failed: {reason}")
    log.error("%s: TLS handshake refused: %s (%s)", what, meaning, reason)
    return Forbidden(f"{what}: {meaning} ({reason})")


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or EOF waiting (poll, not select: any fd number)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class TLSSource(Protocol):
    """The mount's TLS settings, kept current (``net.credentials.Credentials``)."""

    generation: int
    ssl_context: ssl.SSLContext

    def refresh(self) -> None: ...


#: (scheme, host, port, TLS generation, background pool)
_PoolKey = tuple[str, str, int, int, bool]


class _Call:
    """One transfer as its worker thread sees it: abandoned when the caller is cancelled."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class _Abandoned(Exception):
    pass


class Endpoints:
    """Ranged GETs to storage endpoints over kept-alive HTTP/1.1 connections.

    Two pools (foreground reads and background read-ahead) keep at most
    ``connections`` idle connections per endpoint each. Connections present the
    TLS context of ``tls`` and are replaced when its ``generation`` changes (a
    renewed X.509 proxy). ``proxy`` (``http://host:port``) carries every request:
    https through a CONNECT tunnel. ``connect_timeout`` bounds connecting (and the
    TLS handshake), ``timeout`` every wait for data.
    """

    def __init__(
        self,
        *,
        tls: TLSSource | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        connections: int = 8,
        proxy: str | None = None,
        user_agent: str = "davfed",
    ) -> None:
        self._tls = tls
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._connections = connections
        self._proxy = urlsplit(proxy) if proxy else None
        self._user_agent = user_agent
        self._idle: dict[_PoolKey, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        # Foreground and background transfers, with room for abandoned ones finishing.
        self._limiter = trio.CapacityLimiter(4 * connections + 8)
        self._default_context: ssl.SSLContext | None = None
        self.connections_made = 0

    async def get_range(
        self,
        url: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
        *,
        background: bool = False,
    ) -> int:
        """GET ``[start, end)`` of ``url`` into ``into``; the number of bytes read.

        Raises :class:`Redirect` for a 3xx and :class:`TargetFailed` for any other
        failure. Cancellation: returns at once; the worker thread stops at its next
        chunk (or its read timeout) and closes its connection; bytes it still writes
        go to ``into`` only, which the cancelled caller no longer reads.
        """
        generation, context = 0, None
        if url.startswith("https:"):
            generation, context = self._tls_now()
        call = _Call()
        done = False
        try:
            got: int = await trio.to_thread.run_sync(
                self._get,
                url,
                start,
                end,
                size,
                into,
                (generation, context, background),
                call,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
            done = True
            return got
        finally:
            if not done:
                call.abandoned = True

    def close(self) -> None:
        """Close the idle connections (transfers still running close theirs)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _tls_now(self) -> tuple[int, ssl.SSLContext]:
        if self._tls is None:
            if self._default_context is None:
                self._default_context = ssl.create_default_context()
            return 0, self._default_context
        self._tls.refresh()
        return self._tls.generation, self._tls.ssl_context

    # -- the worker thread's side ----------------------------------------------

    def _get(
        self,
        url: str,
        start: int,
        end: int,
        size: int,
        into: memoryview,
        pool: tuple[int, ssl.SSLContext | None, bool],
        call: _Call,
    ) -> int:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise TargetFailed(BadResponse(f"unusable URL {redact_url(url)}"), url) from None
        key: _PoolKey = (scheme, host, port, pool[0], pool[2])
        if self._proxy is not None and scheme == "http":
            target = url  # absolute form, to the proxy
        else:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
        }
        what = f"GET {redact_url(url)}"
        conn, response = self._send(key, pool[1], target, headers, url, what)
        try:
            plan = plan_body(response.status, response.getheader, url, start, end, size)
        except Redirect:
            self._finish(key, conn, response, read_small=True)
            raise
        except Exception as exc:
            self._finish(key, conn, response, read_small=True)
            raise TargetFailed(exc, url) from None
        if plan is None:
            self._finish(key, conn, response, read_small=True)
            return 0
        try:
            got = self._fill(response, into[: end - start], plan, url, call)
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
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on an idle connection (again on a new one if the server had
        closed it meanwhile) or a new one; return the connection and its answer's head."""
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(key, context)
                conn.request("GET", target, headers=headers)
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
        scheme, host, port = key[0], key[1], key[2]
        conn: http.client.HTTPConnection
        proxy = self._proxy
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
            key[1],
            key[2],
            "background" if key[4] else "foreground",
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
            if self._tls is not None and key[0] == "https" and key[3] != self._tls.generation:
                idle = None  # made with a credential since renewed
            else:
                idle = self._idle.setdefault(key, [])
            if idle is not None and len(idle) < self._connections:
                idle.append(conn)
                return
        conn.close()

    @staticmethod
    def _fill(
        response: http.client.HTTPResponse, into: memoryview, plan: BodyPlan, url: str, call: _Call
    ) -> int:
        """Read the body into ``into`` as ``plan`` says; the number of bytes read.

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
            while filled < want and not skip:
                if call.abandoned:
                    raise _Abandoned
                n = response.readinto(into[filled : filled + CHUNK])
                if not n:
                    break
                filled += n
            if plan.exact and filled == want and response.read(1):
                message = f"{redact_url(url)}: body longer than {want} bytes"
                raise TargetFailed(IntegrityError(message), url, filled)
        except TimeoutError as exc:
            raise body_failed(url, filled, exc, timed_out=True) from None
        except http.client.IncompleteRead:
            pass  # the body ended early: reported below
        except (OSError, http.client.HTTPException) as exc:
            raise body_failed(url, filled, exc, timed_out=False) from exc
        return body_complete(url, filled, want)
