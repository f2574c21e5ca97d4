"""The HTTP rules davfed follows, written once: pure functions and the redirect loop.

Owns: what a 3xx means and where it points (:func:`redirect_target`), the one
redirect-following loop (:func:`follow`), what a status without data means
(:func:`status_error`), whether an answer to a ranged GET carries the bytes asked
for (:func:`plan_body`, :func:`parse_content_range`), when a body is complete or
failed (:func:`body_complete`, :func:`body_failed`), and the one walk over an
exception's causes (:func:`causes`) that finds a TLS failure behind it
(:func:`tls_reason`, :func:`connection_error`).
Must not import: httpx, trio, pyfuse3, or davfed modules but ``errors`` and ``redaction``.
Both the ranged-GET transport (:mod:`davfed_fuse.net.transport`) and the
federation's httpx requests (:mod:`davfed_fuse.net.federation`) take their rules here.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

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

#: Redirects followed for one request before giving up.
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: A redirect's or error's body up to this size is read, keeping the connection.
SMALL_BODY = 64 << 10
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

T = TypeVar("T")

#: (scheme, lowercase host, port): what "the same server" means for credentials and penalties.
Origin = tuple[str, str, int | None]


def origin(url: str) -> Origin:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class TargetFailed(Exception):
    """A replica failed in a way another replica may not: try the next one.

    ``got`` bytes of the asked range had arrived before the failure; ``trusted``:
    they may be kept (False when the answer turned out not to be the range: a body
    longer than promised). ``in_body``: the failure came while reading the body
    (the answer's head was good). ``from_server``: the server's own answer (a
    status passed through a proxy unchanged), which a proxy is not to blame for.
    """

    def __init__(
        self,
        error: Exception,
        url: str,
        got: int = 0,
        *,
        in_body: bool = False,
        trusted: bool = True,
        from_server: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.from_server = from_server
        self.error = error
        self.url = url
        self.got = got
        self.in_body = in_body
        self.trusted = trusted


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


def redirect_target(url: str, location: str | None, status: int) -> str:
    """The absolute URL a 3xx answer from ``url`` points at; BadResponse if unusable."""
    if not location:
        raise BadResponse(f"{status} from {redact_url(url)} without a Location")
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise BadResponse(f"redirect from {redact_url(url)} to a non-HTTP {scheme!r} URL")
    return target


async def follow(
    url: str,
    step: Callable[[str, int], Awaitable[T]],
    *,
    what: str,
    max_redirects: int = MAX_REDIRECTS,
) -> T:
    """Call ``step(url, hop)`` until it returns, following the :class:`Redirect`\\ s it raises.

    This is davfed's one redirect loop (RFC 9110 §15.4): ``step`` sends the request
    (and decides which headers a URL gets); each :class:`Redirect` it raises names
    the next URL. Raises BadResponse for a loop or more than ``max_redirects`` hops.
    """
    seen = {url}
    for hop in range(max_redirects + 1):
        try:
            return await step(url, hop)
        except Redirect as redirect:
            url = redirect.location
        if url in seen:
            raise BadResponse(f"{what}: redirect loop at {redact_url(url)}")
        seen.add(url)
    raise BadResponse(f"{what}: more than {max_redirects} redirects")


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


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes a-b/total`` -> (a, b + 1, total or None). Raises BadResponse."""
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise BadResponse(f"unreadable Content-Range {value!r}")
    first, last, total = match.groups()
    return int(first), int(last) + 1, None if total == "*" else int(total)


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
    if status in REDIRECTS:
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


def body_failed(url: str, got: int, exc: BaseException, *, timed_out: bool) -> TargetFailed:
    """The failed replica whose body broke off (or stalled) after ``got`` good bytes."""
    if timed_out:
        error: Exception = UpstreamTimeout(f"reading {redact_url(url)}: timed out")
    else:
        error = UpstreamError(f"reading {redact_url(url)}: {exc!r}")
    return TargetFailed(error, url, got, in_body=True)


def body_too_long(url: str, want: int) -> TargetFailed:
    """The failed replica whose body went on past the ``want`` bytes of its range.

    Its ``want`` bytes arrived, but are not to be kept: the server sent something
    other than the range.
    """
    error = IntegrityError(f"{redact_url(url)}: body longer than {want} bytes")
    return TargetFailed(error, url, want, in_body=True, trusted=False)


def body_complete(url: str, got: int, want: int) -> int:
    """``got``, if the body brought all ``want`` bytes; else raise its failed replica."""
    if got < want:
        message = f"{redact_url(url)}: body ended after {got} of {want} bytes"
        raise TargetFailed(IntegrityError(message), url, got, in_body=True)
    return got


# -- what a failed connection means -------------------------------------------------


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, else ``__context__``), in order.

    The one walk over an exception's causes: httpx wraps httpcore's errors, which
    wrap the ``ssl`` module's; ``http.client`` raises them directly.
    """
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


def has_tls_error(exc: BaseException) -> bool:
    """Whether an ``ssl.SSLError`` is behind ``exc``."""
    return any(isinstance(seen, ssl.SSLError) for seen in causes(exc))


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
    for seen in causes(exc):
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
