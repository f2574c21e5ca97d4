"""The one errno table, and the handler boundary that keeps exceptions from killing the mount."""

from __future__ import annotations

import errno
import subprocess
import sys

import httpx
import pyfuse3
import pytest
import trio

from davfed_fuse.daemon.handlers import fuse_errors
from davfed_fuse.errors import (
    BadResponse,
    DavfedError,
    Forbidden,
    IntegrityError,
    MountError,
    NotFound,
    ReadOnly,
    UpstreamError,
    UpstreamTimeout,
    errno_for,
)
from davfed_fuse.net.httpclient import map_exceptions, translate


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("x"), errno.ENOENT),
        (Forbidden("x"), errno.EACCES),
        (ReadOnly("x"), errno.EROFS),
        (UpstreamTimeout("x"), errno.ETIMEDOUT),
        (UpstreamError("x"), errno.EIO),
        (IntegrityError("x"), errno.EIO),
        (BadResponse("x"), errno.EIO),
        (MountError("x"), errno.EIO),
        (DavfedError("x"), errno.EIO),
        (TimeoutError(), errno.ETIMEDOUT),
        (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT),
        (ValueError("a bug"), errno.EIO),
        (KeyError("a bug"), errno.EIO),
    ],
)
def test_errno_table(exc: Exception, code: int) -> None:
    assert errno_for(exc) == code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadTimeout("x"), errno.ETIMEDOUT),
        (httpx.ConnectError("x"), errno.EIO),
        (httpx.RemoteProtocolError("x"), errno.EIO),
        (httpx.TooManyRedirects("x"), errno.EIO),
    ],
)
def test_httpx_errors_reach_the_table_as_davfed_errors(exc: Exception, code: int) -> None:
    """The network layer translates httpx's exceptions at its boundary (errors.py knows none)."""
    translated = translate(exc, "GET /f")
    assert isinstance(translated, DavfedError)
    assert errno_for(translated) == code
    with pytest.raises(DavfedError) as raised, map_exceptions("GET /f"):
        raise exc
    assert raised.value.__cause__ is exc


async def test_no_exception_escapes_a_handler_but_as_fuse_error() -> None:
    @fuse_errors
    async def handler(exc: BaseException) -> None:
        raise exc

    for exc, code in [
        (NotFound("gone"), errno.ENOENT),
        (ZeroDivisionError(), errno.EIO),
        (trio.TooSlowError(), errno.ETIMEDOUT),  # a deadline below the handler's
    ]:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await handler(exc)
        assert raised.value.errno == code
    with pytest.raises(pyfuse3.FUSEError) as passed:
        await handler(pyfuse3.FUSEError(errno.ENOTDIR))
    assert passed.value.errno == errno.ENOTDIR
    # Cancellation and other BaseExceptions are not errnos: they go through.
    with pytest.raises(KeyboardInterrupt):
        await handler(KeyboardInterrupt())


async def test_a_request_that_outlives_its_budget_is_etimedout(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Ops:
        request_timeout = 5.0

        @fuse_errors
        async def read(self) -> None:
            await trio.sleep(1000)  # something below is stuck

    started = trio.current_time()
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await Ops().read()
    assert raised.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - started == pytest.approx(5.0)


def test_the_errno_table_loads_no_io_framework() -> None:
    """errors.py is on the mount helper's path: it must not load httpx or trio."""
    code = "import sys, davfed_fuse.errors, davfed_fuse.net.http, davfed_fuse.net.replicas; "
    code += "print(sorted(m for m in ('httpx', 'trio', 'pyfuse3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
