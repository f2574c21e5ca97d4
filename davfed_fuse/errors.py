"""davfed's exception hierarchy and the one place where errors become errnos.

Owns: the mapping from every failure davfed knows about to a POSIX errno.
Must not import: pyfuse3 (``daemon.handlers`` turns :func:`errno_for` into ``FUSEError``),
httpx or trio: the network layer raises these errors in place of httpx's
(``net.httpclient.map_exceptions``), and the handlers their deadline's as
:class:`UpstreamTimeout`. A pure module, loaded by the mount helper.

::

    DavfedError                      (EIO)
    ├── UsageError                   bad command line or mount option (exit 1)
    ├── MountError                   the mount could not be set up (exit 32)
    ├── NotFound                     ENOENT   404/410 from the federation
    ├── Forbidden                    EACCES   401/403, TLS client cert rejected
    ├── ReadOnly                     EROFS    any write
    ├── UpstreamTimeout              ETIMEDOUT deadline or retry budget used up
    ├── UpstreamError                EIO      5xx, connection failure, protocol error
    │   └── IntegrityError           EIO      a replica whose bytes or size disagree
    └── BadResponse                  EIO      malformed XML, absurd sizes, hostile input
"""

from __future__ import annotations

import errno
import logging

log = logging.getLogger(__name__)


class DavfedError(Exception):
    """Base class; ``errno`` is what a reader of the mount sees."""

    errno: int = errno.EIO


class UsageError(DavfedError):
    """A bad command line or mount option (exit code 1)."""

    errno = errno.EINVAL


class MountError(DavfedError):
    """The mount could not be set up (exit code 32)."""


class NotFound(DavfedError):
    errno = errno.ENOENT


class Forbidden(DavfedError):
    errno = errno.EACCES


class ReadOnly(DavfedError):
    errno = errno.EROFS


class UpstreamTimeout(DavfedError):
    errno = errno.ETIMEDOUT


class UpstreamError(DavfedError):
    errno = errno.EIO


class IntegrityError(UpstreamError):
    """A replica's size or bytes disagree with the federation's metadata."""


class BadResponse(DavfedError):
    errno = errno.EIO


def errno_for(exc: Exception) -> int:
    """Return the errno a FUSE request fails with when ``exc`` escapes its handler.

    This is the only errno table in davfed. Unknown exceptions are logged with
    their traceback and become EIO: a bug must never take the mount down.
    """
    if isinstance(exc, DavfedError):
        return exc.errno
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    log.error("internal error, returning EIO", exc_info=exc)
    return errno.EIO
