"""The ranged-GET transport (net/transport.py): worker threads against a loopback server."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
import trio

from davfed_fuse.buffers import new_buffer
from davfed_fuse.errors import (
    BadResponse,
    Forbidden,
    IntegrityError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.net.http import BodyPlan, Redirect, TargetFailed, plan_body
from davfed_fuse.net.transport import Lane, Transport

DATA = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves DATA at any path; the path's first segment picks a behaviour."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()  # client ports seen
    stall = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Handler.connections.add(self.client_address[1])
        mode = self.path.strip("/").split("/")[0]
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        assert match
        first, last = int(match[1]), min(int(match[2]), len(DATA) - 1)
        body = DATA[first : last + 1]
        if mode == "redirect":
            return self._send(302, b"moved", {"Location": "/ok/f"})
        if mode == "missing":
            return self._send(404, b"no")
        if mode == "forbidden":
            return self._send(403, b"no")
        if mode == "whole":
            return self._send(200, DATA)
        if mode == "gzip":
            return self._send(206, body, self._range(first, last) | {"Content-Encoding": "gzip"})
        if mode == "liar":  # says the file has another size
            return self._send(206, body, {"Content-Range": f"bytes {first}-{last}/5"})
        if mode == "long":  # more bytes than the range, and says so
            return self._send(206, body + b"xx", self._range(first, last))
        if mode in ("short", "stall"):  # promises the range, sends half, then closes / stalls
            self.send_response(206)
            for key, value in self._range(first, last).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                Handler.stall.wait(10)
            self.close_connection = True
            return None
        if mode == "closing":  # answers, then closes the kept-alive connection
            self._send(206, body, self._range(first, last))
            self.close_connection = True
            return None
        return self._send(206, body, self._range(first, last))

    @staticmethod
    def _range(first: int, last: int) -> dict[str, str]:
        return {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up early (it read what it asked for) is no error here."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    Handler.connections.clear()
    Handler.stall.clear()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        Handler.stall.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def opened() -> Iterator[list[Transport]]:
    """Transports made by a test, closed after it (their idle connections)."""
    made: list[Transport] = []
    yield made
    for endpoints in made:
        endpoints.close()


async def get(endpoints: Transport, url: str, start: int, end: int, size: int = len(DATA)) -> bytes:
    buffer = new_buffer(end - start)
    got = await endpoints.get_range(url, start, end, size, memoryview(buffer))
    return bytes(buffer[:got])


async def test_ranges_arrive_whole_and_connections_are_kept(
    server: str, opened: list[Transport]
) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    assert await get(endpoints, f"{server}/ok/f", 0, 100) == DATA[:100]
    assert await get(endpoints, f"{server}/ok/f", 5000, len(DATA)) == DATA[5000:]
    assert await get(endpoints, f"{server}/ok/f", 10, 20) == DATA[10:20]
    assert endpoints.connections_made == 1
    assert len(Handler.connections) == 1


async def test_each_lane_keeps_its_own_connections(server: str, opened: list[Transport]) -> None:
    """Read-ahead never takes the connection a reader's next request would find idle."""
    transport = Transport(timeout=5)
    opened.append(transport)
    url = f"{server}/ok/f"
    buffer = new_buffer(100)
    await transport.get_range(url, 0, 100, len(DATA), memoryview(buffer))
    await transport.get_range(url, 0, 100, len(DATA), memoryview(buffer), lane=Lane.BACKGROUND)
    assert transport.connections_made == 2
    for lane in (Lane.FOREGROUND, Lane.BACKGROUND, Lane.FOREGROUND):
        got = await transport.get_range(url, 100, 200, len(DATA), memoryview(buffer), lane=lane)
        assert bytes(buffer[:got]) == DATA[100:200]
    assert transport.connections_made == 2


async def test_a_connection_the_server_closed_is_replaced(
    server: str, opened: list[Transport]
) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    assert await get(endpoints, f"{server}/closing/f", 0, 100) == DATA[:100]
    await trio.sleep(0.05)  # the server has closed it by now
    assert await get(endpoints, f"{server}/ok/f", 100, 200) == DATA[100:200]
    assert endpoints.connections_made == 2


async def test_a_200_with_the_whole_file_is_cut_to_the_range(
    server: str, opened: list[Transport]
) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    assert await get(endpoints, f"{server}/whole/f", 3000, 3100) == DATA[3000:3100]
    # The rest of that body was not read: its connection was closed, not reused.
    assert await get(endpoints, f"{server}/ok/f", 0, 10) == DATA[:10]
    assert endpoints.connections_made == 2


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("missing", NotFound),
        ("forbidden", Forbidden),
        ("gzip", BadResponse),
        ("liar", IntegrityError),
        ("long", IntegrityError),
        ("short", IntegrityError),
    ],
)
async def test_failures_name_the_replica_and_the_good_bytes(
    server: str, opened: list[Transport], mode: str, error: type[Exception]
) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    with pytest.raises(TargetFailed) as failed:
        await get(endpoints, f"{server}/{mode}/f", 0, 1000)
    assert isinstance(failed.value.error, error)
    assert failed.value.url == f"{server}/{mode}/f"
    assert failed.value.got == (500 if mode == "short" else 1000 if mode == "long" else 0)


async def test_a_redirect_is_reported_with_its_absolute_target(
    server: str, opened: list[Transport]
) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    with pytest.raises(Redirect) as redirect:
        await get(endpoints, f"{server}/redirect/f", 0, 10)
    assert redirect.value.location == f"{server}/ok/f"
    assert await get(endpoints, redirect.value.location, 0, 10) == DATA[:10]
    assert endpoints.connections_made == 1  # the redirect's small body was read


async def test_a_stalled_body_times_out_keeping_what_arrived(
    server: str, opened: list[Transport]
) -> None:
    endpoints = Transport(timeout=0.3)
    opened.append(endpoints)
    started = time.monotonic()
    buffer = new_buffer(1000)
    with pytest.raises(TargetFailed) as failed:
        await endpoints.get_range(f"{server}/stall/f", 0, 1000, len(DATA), memoryview(buffer))
    assert isinstance(failed.value.error, UpstreamTimeout)
    got = failed.value.got  # whole chunks only: here none, as the chunk is the whole range
    assert got <= 500 and bytes(buffer[:got]) == DATA[:got]
    assert time.monotonic() - started < 3


async def test_a_refused_connection_is_a_failed_replica(opened: list[Transport]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    endpoints = Transport(timeout=1, connect_timeout=1)
    opened.append(endpoints)
    with pytest.raises(TargetFailed) as failed:
        await get(endpoints, f"http://127.0.0.1:{port}/f", 0, 10)
    assert isinstance(failed.value.error, UpstreamError)


@pytest.mark.parametrize("path", [":notaport/f", "/a b"])
async def test_an_unusable_url_is_a_failed_replica(
    server: str, opened: list[Transport], path: str
) -> None:
    endpoints = Transport(timeout=1, connect_timeout=1)
    opened.append(endpoints)
    url = server.rsplit(":", 1)[0] + path if path.startswith(":") else server + path
    with pytest.raises(TargetFailed) as failed:
        await get(endpoints, url, 0, 10)
    assert isinstance(failed.value.error, BadResponse)
    assert endpoints.connections_made == (0 if path.startswith(":") else 1)


async def test_cancellation_returns_at_once(server: str, opened: list[Transport]) -> None:
    endpoints = Transport(timeout=5)
    opened.append(endpoints)
    started = time.monotonic()
    with trio.move_on_after(0.2) as scope:
        await get(endpoints, f"{server}/stall/f", 0, 1000)
    assert scope.cancelled_caught
    assert time.monotonic() - started < 1


def test_plan_body_rules() -> None:
    header = {"Content-Range": "bytes 10-19/100"}.get
    assert plan_body(206, header, "http://e/f", 10, 20, 100) == BodyPlan(skip=0, exact=True)
    assert plan_body(200, {}.get, "http://e/f", 10, 20, 100) == BodyPlan(skip=10, exact=False)
    assert plan_body(416, {}.get, "http://e/f", 100, 110, 100) is None
    with pytest.raises(IntegrityError):
        plan_body(200, {"Content-Length": "99"}.get, "http://e/f", 10, 20, 100)
    with pytest.raises(IntegrityError):  # the wrong bytes
        plan_body(206, header, "http://e/f", 0, 10, 100)
    with pytest.raises(BadResponse):
        plan_body(302, {}.get, "http://e/f", 0, 10, 100)  # no Location
    with pytest.raises(BadResponse):
        plan_body(302, {"Location": "ftp://x/f"}.get, "http://e/f", 0, 10, 100)
    with pytest.raises(UpstreamTimeout):
        plan_body(504, {}.get, "http://e/f", 0, 10, 100)
    with pytest.raises(UpstreamError):
        plan_body(416, {}.get, "http://e/f", 0, 10, 100)  # 416 inside the file
