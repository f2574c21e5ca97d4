"""Ranged GETs through a proxy list over real sockets: a proxy that fails mid-body,
answers with its own error or a wrong range is left for the next one, and the read
goes on where it stopped with every byte right."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from davfed_fuse.net.http import TargetFailed
from davfed_fuse.net.proxylist import ProxyList
from davfed_fuse.net.transport import Transport

SIZE = 6 << 20
DATA = bytes((i * 7 + i // 251) % 256 for i in range(SIZE))


class FakeProxy(http.server.ThreadingHTTPServer):
    """A forward proxy serving DATA for any absolute URL, misbehaving as told."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode = mode  # good, cut, squid-error, wrong-range, not-found, stall
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range", "")
        self.server.requests.append((self.path, rng))
        match = re.match(r"bytes=(\d+)-(\d+)", rng)
        assert match and self.path.startswith("http://"), "absolute form with a Range"
        first, last = int(match[1]), int(match[2])
        mode = self.server.mode
        if mode == "squid-error":
            self.send_response(503)
            self.send_header("X-Squid-Error", "ERR_CONNECT_FAIL 111")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "not-found":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "wrong-range":
            first, last = first + 1, last + 1
        body = DATA[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{SIZE}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(body[: (3 << 20) + 12345])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def proxies() -> Iterator[dict[str, FakeProxy]]:
    servers = {m: FakeProxy(m) for m in ("good", "cut", "squid-error", "wrong-range", "not-found")}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


URL = "http://storage.invalid:9/ep0/file.bin?X-Amz-Signature=abc"


async def read(transport: Transport, start: int = 0, end: int = SIZE) -> bytes:
    into = bytearray(end - start)
    got = await transport.get_range(URL, start, end, SIZE, memoryview(into))
    assert got == end - start
    return bytes(into)


@pytest.mark.parametrize("bad", ["cut", "squid-error", "wrong-range"])
async def test_a_failing_proxy_hands_the_rest_of_the_range_to_the_next(
    proxies: dict[str, FakeProxy], bad: str
) -> None:
    plist = ProxyList(f"{proxies[bad].url};{proxies['good'].url}")
    transport = Transport(proxies=plist, timeout=5)
    assert await read(transport) == DATA
    assert plist.current() == proxies["good"].url, "every later request moved on"
    assert plist.info()["failures"] == {proxies[bad].url: 1}
    ((_, rng),) = proxies["good"].requests
    if bad == "cut":  # the good bytes stayed: the next proxy was asked for the rest only
        start = int(rng.removeprefix("bytes=").split("-")[0])
        assert 0 < start <= (3 << 20) + 12345
    else:
        assert rng == f"bytes=0-{SIZE - 1}"
    transport.close()


async def test_the_endpoints_own_answer_is_not_the_proxys_fault(
    proxies: dict[str, FakeProxy],
) -> None:
    plist = ProxyList(f"{proxies['not-found'].url};{proxies['good'].url}")
    transport = Transport(proxies=plist, timeout=5)
    with pytest.raises(TargetFailed, match="404"):
        await read(transport)
    assert plist.current() == proxies["not-found"].url and plist.info()["failovers"] == 0
    assert proxies["good"].requests == []
    transport.close()


async def test_a_dead_proxy_fails_over_to_direct_and_all_failing_is_the_endpoints(
    proxies: dict[str, FakeProxy],
) -> None:
    dead = FakeProxy("good")
    dead_url = dead.url
    dead.server_close()  # nothing listens there now
    plist = ProxyList(f"{dead_url};{proxies['good'].url}")
    transport = Transport(proxies=plist, timeout=5, connect_timeout=2)
    assert await read(transport, 1000, 2_000_000) == DATA[1000:2_000_000]
    plist.set(f"{dead_url};{proxies['squid-error'].url}")
    with pytest.raises(TargetFailed) as caught:
        await read(transport)
    assert caught.value.got == 0 and not caught.value.from_server
    transport.close()
