"""The federation's read path on loopback servers, through the transport production uses.

A federation and three storage endpoints, each an HTTP/1.1 server on its own
port of 127.0.0.1: every ranged GET goes through :class:`~davfed_fuse.net.transport.Transport`
(worker threads, ``http.client``), metalinks through httpx, as in a mount.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import Message

import httpx
import pytest
import trio

from davfed_fuse.errors import (
    BadResponse,
    Forbidden,
    IntegrityError,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.http import parse_content_range
from davfed_fuse.net.replicas import backoff
from davfed_fuse.net.transport import Transport

DATA = bytes(range(256)) * 40  # 10240 bytes


@dataclass
class Request:
    """A request as one of the World's servers saw it."""

    host: str  # "fed.test" or "store<i>.test": which server (by port)
    method: str
    path: str
    query: str
    headers: Message


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: bool = False  # promise the body, send half of it, hang up
    stall: bool = False  # send nothing until the test ends


#: A replica's behaviour for one request: None serves it, a status fails it,
#: "cut" sends half the body then breaks the connection.
Behaviour = Callable[[Request], int | str | None]


class World:
    """A federation that redirects ``/myfed/f`` to the first of its replicas.

    Its metalink lists every replica; each replica's behaviour can be switched.
    """

    def __init__(self, replicas: int = 3) -> None:
        self.requests: list[Request] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.total = len(DATA)
        self.body_delta = 0  # bytes added to (or cut from) each ranged body
        self.metalink = True
        self.no_replica_answers = 0
        self.latency = 0.0  # seconds each server takes to answer
        self.released = threading.Event()  # ends stalled answers
        self._servers: dict[int, tuple[str, http.server.ThreadingHTTPServer]] = {}
        self.fed = self._serve("fed.test")
        ports = [self._serve(f"store{i}.test") for i in range(replicas)]
        self.replicas = [f"http://127.0.0.1:{port}/ep/f" for port in ports]
        self.made: list[Federation] = []

    def _serve(self, name: str) -> int:
        world = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def _answer(self) -> None:
                path, _, query = self.path.partition("?")
                request = Request(name, self.command, path, query, self.headers)
                if world.latency:
                    time.sleep(world.latency)  # a round trip, on the server's side
                reply = world.handler(request)
                if reply.stall:
                    world.released.wait(10)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                length = len(reply.body) * (2 if reply.cut else 1)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)
                if reply.cut:
                    self.wfile.flush()
                    self.close_connection = True

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        port = server.server_address[1]
        self._servers[port] = (name, server)
        return port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.fed}/myfed/"

    def handler(self, request: Request) -> Reply:
        self.requests.append(request)
        host = request.host
        if host == "fed.test":
            return self.federation(request)
        self.hits[host] += 1
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["Range"])
        assert match
        first, last = int(match[1]), int(match[2])
        body = DATA[first : last + 1]
        behaviour = self.behaviour.get(host, lambda r: None)(request)
        if isinstance(behaviour, int):
            return Reply(behaviour)
        headers = {"Content-Range": f"bytes {first}-{min(last, len(DATA) - 1)}/{self.total}"}
        if behaviour == "cut":
            return Reply(206, headers, body[: len(body) // 2], cut=True)
        if self.body_delta > 0:
            body += b"x" * self.body_delta
        elif self.body_delta < 0:
            body = body[: self.body_delta]
        return Reply(206, headers, body)

    def federation(self, request: Request) -> Reply:
        path = request.path
        if path == "/myfed/missing":
            return Reply(404)
        if self.no_replica_answers > 0:  # Dynafed while its checker sees no endpoint online
            self.no_replica_answers -= 1
            return Reply(404)
        if path.startswith("/myfed/hop"):
            hop = int(path.removeprefix("/myfed/hop"))
            return Reply(302, {"Location": f"/myfed/hop{hop + 1}"})
        if path == "/myfed/ftp":
            return Reply(302, {"Location": "ftp://x/y"})
        if request.query == "metalink":
            if not self.metalink:
                return Reply(404)
            urls = "".join(f"<url priority='{i}'>{u}</url>" for i, u in enumerate(self.replicas))
            ns = "urn:ietf:params:xml:ns:metalink"
            xml = f"<metalink xmlns='{ns}'><file name='/f'>{urls}</file></metalink>"
            return Reply(200, body=xml.encode())
        return Reply(302, {"Location": self.replicas[0]})

    def hosts(self, requests: list[Request] | None = None) -> list[str]:
        return [r.host for r in (self.requests if requests is None else requests)]

    def data_hosts(self) -> list[str]:
        return [host for host in self.hosts() if host != "fed.test"]

    def store(self, i: int) -> str:
        """The ``host:port`` of replica ``i``, as in its URL."""
        return self.replicas[i].split("/")[2]

    async def close(self) -> None:
        self.released.set()
        for fed in self.made:
            await fed.aclose()
        for _name, server in self._servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    try:
        yield world
    finally:
        await world.close()


def make(
    world: World, now: list[float] | None = None, retries: int = 1, budget: float = 120.0
) -> Federation:
    """A Federation as a mount builds it: httpx for metadata, the Transport for data.

    Rounds of retries follow each other at once (the backoff is tested on its own).
    """
    clock = (lambda: now[0]) if now is not None else (lambda: 1e9)
    fed = Federation(
        world.base,
        httpx.AsyncClient(trust_env=False),
        transport=Transport(timeout=5, connect_timeout=5),
        federation_headers=lambda: {"Authorization": "Bearer T"},
        wall_clock=clock,
        retries=retries,
        budget=budget,
        retry_delay=lambda _round: 0.0,
    )
    world.made.append(fed)
    return fed


async def test_read_follows_the_redirect_once_per_file(world: World) -> None:
    fed = make(world)
    assert await fed.read("f", 0, 100, len(DATA)) == DATA[:100]
    assert await fed.read("f", 5000, 6000, len(DATA)) == DATA[5000:6000]
    assert world.hosts() == ["fed.test", "store0.test", "store0.test"]


async def test_credentials_stay_with_the_federation(world: World) -> None:
    fed = make(world)
    await fed.read("f", 0, 10, len(DATA))
    fed_request, store_request = world.requests
    assert fed_request.headers["Authorization"] == "Bearer T"
    assert "Authorization" not in store_request.headers


async def test_reads_clip_at_eof(world: World) -> None:
    fed = make(world)
    assert await fed.read("f", len(DATA) - 10, len(DATA) + 4096, len(DATA)) == DATA[-10:]
    assert await fed.read("f", len(DATA), len(DATA) + 1, len(DATA)) == b""


async def test_expired_target_is_resolved_again(world: World) -> None:
    now = [1000.0]
    world.replicas[0] += "?Expires=1100&Signature=s"
    fed = make(world, now)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1030.0  # before renewal (halfway: 1050)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1060.0
    await fed.read("f", 0, 10, len(DATA))
    assert world.hosts().count("fed.test") == 2


async def test_an_expired_signature_means_resolve_again_not_eacces(world: World) -> None:
    fed = make(world)
    await fed.read("f", 0, 10, len(DATA))
    world.behaviour["store0.test"] = lambda r: 403 if world.hits["store0.test"] == 2 else None
    assert await fed.read("f", 10, 20, len(DATA)) == DATA[10:20]


@pytest.mark.parametrize("failure", [503, 404, 410, 403, 500, "cut"])
async def test_a_failing_replica_fails_over_to_the_next(world: World, failure: int | str) -> None:
    world.behaviour["store0.test"] = lambda r: failure
    fed = make(world)
    assert await fed.read("f", 100, 9000, len(DATA)) == DATA[100:9000]
    assert world.data_hosts()[-1] == "store1.test"
    # The failed endpoint is passed over by the next read, without asking again.
    before = len(world.requests)
    assert await fed.read("f", 0, 50, len(DATA)) == DATA[:50]
    assert world.hosts(world.requests[before:]) == ["store1.test"]


async def test_a_cut_body_continues_where_it_stopped(world: World) -> None:
    world.behaviour["store0.test"] = lambda r: "cut"
    fed = make(world)
    assert await fed.read("f", 1000, 9000, len(DATA)) == DATA[1000:9000]
    resumed = next(r for r in world.requests if r.host == "store1.test")
    assert resumed.headers["Range"] == f"bytes={1000 + 4000}-{9000 - 1}"


async def test_without_a_metalink_the_federation_is_asked_again(world: World) -> None:
    world.metalink = False
    world.behaviour["store0.test"] = lambda r: 503 if world.hits["store0.test"] == 1 else None
    fed = make(world)
    assert await fed.read("f", 0, 10, len(DATA)) == DATA[:10]


@pytest.mark.parametrize(
    ("status", "error"), [(403, Forbidden), (404, UpstreamError), (503, UpstreamError)]
)
async def test_when_every_replica_fails_the_error_comes_after_bounded_rounds(
    world: World, status: int, error: type[Exception]
) -> None:
    for host in ("store0.test", "store1.test", "store2.test"):
        world.behaviour[host] = lambda r: status
    with pytest.raises(error):
        await make(world, retries=2).read("f", 0, 10, len(DATA))
    # Three rounds (the first and two retries) over three replicas.
    assert sum(world.hits.values()) == 9


async def test_a_replica_of_another_size_is_refused(world: World) -> None:
    world.total = len(DATA) - 1
    with pytest.raises(IntegrityError, match="federation says"):
        await make(world, retries=0).read("f", 0, 10, len(DATA))


async def test_missing_file_and_bad_redirects(world: World) -> None:
    fed = make(world)
    with pytest.raises(UpstreamError, match="no replica"):
        await fed.read("missing", 0, 10, 100)
    with pytest.raises(BadResponse, match="redirects"):
        await fed.read("hop0", 0, 10, 100)
    with pytest.raises(BadResponse, match="non-HTTP"):
        await fed.read("ftp", 0, 10, 100)


def test_content_range() -> None:
    assert parse_content_range("bytes 0-99/1000") == (0, 100, 1000)
    assert parse_content_range("bytes 5-5/*") == (5, 6, None)
    with pytest.raises(BadResponse):
        parse_content_range("bytes */1000")


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for round_number, top in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 8.0)]:
        delays = [backoff(round_number) for _ in range(200)]
        assert all(top / 2 <= d <= top for d in delays)
        assert len(set(delays)) > 100


@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_body_of_the_wrong_length_is_refused(world: World, delta: int) -> None:
    world.body_delta = delta
    with pytest.raises(IntegrityError, match="body"):
        await make(world, retries=0).read("f", 0, 100, len(DATA))
    assert sum(world.hits.values()) == 3, "every replica was tried before failing"


async def test_a_slow_target_costs_at_most_the_budget(world: World) -> None:
    original = world.handler

    def slow(request: Request) -> Reply:
        reply = original(request)
        if request.host != "fed.test":
            reply.stall = True  # no answer until the test ends
        return reply

    world.handler = slow  # type: ignore[method-assign]
    fed = make(world, budget=0.5)
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout, match=r"within 0\.5 s"):
        await fed.read("f", 0, 10, len(DATA))
    assert trio.current_time() - started == pytest.approx(0.5, abs=0.25)


async def test_a_federation_without_replicas_for_a_moment_is_asked_again(world: World) -> None:
    world.no_replica_answers = 2
    fed = make(world, retries=3)
    assert await fed.read("f", 0, 10, len(DATA)) == DATA[:10]
    assert world.hosts().count("fed.test") == 3
    world.no_replica_answers = 10
    fed.forget_target("f")
    with pytest.raises(UpstreamError, match="no replica can serve it"):
        await fed.read("f", 0, 10, len(DATA))


async def test_concurrent_first_reads_of_a_file_ask_the_federation_once(world: World) -> None:
    world.latency = 0.01  # a round trip: the reads overlap
    fed = make(world)
    results: dict[int, bytes | bytearray | memoryview] = {}

    async def read(start: int) -> None:
        results[start] = await fed.read("f", start, start + 1000, len(DATA))

    async with trio.open_nursery() as nursery:
        for start in (0, 3000, 6000):
            nursery.start_soon(read, start)
    assert {k: bytes(v) for k, v in results.items()} == {
        k: DATA[k : k + 1000] for k in (0, 3000, 6000)
    }
    hosts = world.hosts()
    assert hosts.count("fed.test") == 1
    assert hosts.count("store0.test") == 3


async def test_a_target_that_starts_redirecting_is_located_again(world: World) -> None:
    """A remembered replica that now answers 302 (it moved its data on): the
    federation is asked again and its redirect followed to the data."""
    original = world.handler

    def handler(request: Request) -> Reply:
        if request.host == "store0.test":
            world.requests.append(request)
            return Reply(302, {"Location": world.replicas[1]})
        return original(request)

    world.handler = handler  # type: ignore[method-assign]
    fed = make(world)
    fed._targets.remember("f", world.replicas[0])  # a target known from before
    assert await fed.read("f", 100, 200, len(DATA)) == DATA[100:200]
    assert world.hosts() == ["store0.test", "fed.test", "store0.test", "store1.test"]


async def test_remembered_targets_leave_after_their_ttl(world: World) -> None:
    """A URL without an expiry is not remembered for the life of the mount."""
    now = [1000.0]
    fed = make(world, now)
    for name in ("f", "g"):
        await fed.read(name, 0, 10, len(DATA))
    assert fed.remembered_targets() == 2
    fed.forget_target("g")
    assert fed.remembered_targets() == 1
    now[0] += 3600.0
    assert fed.remembered_targets() == 0
    await fed.read("f", 0, 10, len(DATA))
    assert world.hosts().count("fed.test") == 3, "asked again after the TTL"
