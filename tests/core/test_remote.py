"""The HTTP layer against an in-process federation (httpx.MockTransport)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

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
from davfed_fuse.net.federation import Federation, backoff
from davfed_fuse.net.transport import parse_content_range

DATA = bytes(range(256)) * 40  # 10240 bytes
FED = "http://fed.test:8000/myfed/"

#: A replica's behaviour for one request: None serves it, a status fails it,
#: "cut" sends half the body then breaks the connection.
Behaviour = Callable[[httpx.Request], int | str | None]


class CutStream(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield self.body[: len(self.body) // 2]
        raise httpx.ReadError("connection reset by peer")


class World:
    """A federation that redirects ``/myfed/f`` to the first of its replicas.

    Its metalink lists every replica; each replica's behaviour can be switched.
    """

    def __init__(self, replicas: int = 3) -> None:
        self.requests: list[httpx.Request] = []
        self.replicas = [f"http://store{i}.test:9000/ep/f" for i in range(replicas)]
        self.behaviour: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.total = len(DATA)
        self.body_delta = 0  # bytes added to (or cut from) each ranged body
        self.metalink = True
        self.no_replica_answers = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.url.host
        if host == "fed.test":
            return self.federation(request)
        self.hits[host] += 1
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["Range"])
        assert match
        first, last = int(match[1]), int(match[2])
        body = DATA[first : last + 1]
        behaviour = self.behaviour.get(host, lambda r: None)(request)
        if isinstance(behaviour, int):
            return httpx.Response(behaviour)
        headers = {"Content-Range": f"bytes {first}-{min(last, len(DATA) - 1)}/{self.total}"}
        if behaviour == "cut":
            return httpx.Response(206, headers=headers, stream=CutStream(body))
        if self.body_delta > 0:
            body += b"x" * self.body_delta
        elif self.body_delta < 0:
            body = body[: self.body_delta]
        # A stream, as on the wire: read once.
        return httpx.Response(206, headers=headers, stream=httpx.ByteStream(body))

    def federation(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/myfed/missing":
            return httpx.Response(404)
        if self.no_replica_answers > 0:  # Dynafed while its checker sees no endpoint online
            self.no_replica_answers -= 1
            return httpx.Response(404)
        if path.startswith("/myfed/hop"):
            hop = int(path.removeprefix("/myfed/hop"))
            return httpx.Response(302, headers={"Location": f"/myfed/hop{hop + 1}"})
        if path == "/myfed/ftp":
            return httpx.Response(302, headers={"Location": "ftp://x/y"})
        if request.url.query == b"metalink":
            if not self.metalink:
                return httpx.Response(404)
            urls = "".join(f"<url priority='{i}'>{u}</url>" for i, u in enumerate(self.replicas))
            ns = "urn:ietf:params:xml:ns:metalink"
            xml = f"<metalink xmlns='{ns}'><file name='/f'>{urls}</file></metalink>"
            return httpx.Response(200, content=xml.encode())
        return httpx.Response(302, headers={"Location": self.replicas[0]})

    def data_hosts(self) -> list[str]:
        return [r.url.host for r in self.requests if r.url.host != "fed.test"]


@pytest.fixture
async def world() -> World:
    return World()


def make(world: World, now: list[float] | None = None, retries: int = 1) -> Federation:
    client = httpx.AsyncClient(transport=httpx.MockTransport(world.handler))
    clock = (lambda: now[0]) if now is not None else (lambda: 1e9)
    return Federation(
        FED,
        client,
        federation_headers=lambda: {"Authorization": "Bearer T"},
        wall_clock=clock,
        retries=retries,
    )


async def test_read_follows_the_redirect_once_per_file(world: World) -> None:
    fed = make(world)
    assert await fed.read("f", 0, 100, len(DATA)) == DATA[:100]
    assert await fed.read("f", 5000, 6000, len(DATA)) == DATA[5000:6000]
    hosts = [r.url.host for r in world.requests]
    assert hosts == ["fed.test", "store0.test", "store0.test"]


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
    world.replicas[0] = "http://store0.test:9000/ep/f?Expires=1100&Signature=s"
    fed = make(world, now)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1030.0  # before renewal (halfway: 1050)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1060.0
    await fed.read("f", 0, 10, len(DATA))
    assert [r.url.host for r in world.requests].count("fed.test") == 2


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
    assert [r.url.host for r in world.requests[before:]] == ["store1.test"]


async def test_a_cut_body_continues_where_it_stopped(world: World) -> None:
    world.behaviour["store0.test"] = lambda r: "cut"
    fed = make(world)
    assert await fed.read("f", 1000, 9000, len(DATA)) == DATA[1000:9000]
    resumed = next(r for r in world.requests if r.url.host == "store1.test")
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
    world: World, status: int, error: type[Exception], autojump_clock: trio.abc.Clock
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


# Abandoning a body half-read leaves httpx's inner stream generators to the
# garbage collector (the connection itself is closed by response.aclose()).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_body_of_the_wrong_length_is_refused(world: World, delta: int) -> None:
    world.body_delta = delta
    with pytest.raises(IntegrityError, match="body"):
        await make(world, retries=0).read("f", 0, 100, len(DATA))
    assert sum(world.hits.values()) == 3, "every replica was tried before failing"


async def test_a_slow_target_costs_at_most_the_budget(
    world: World, autojump_clock: trio.abc.Clock
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.host != "fed.test":
            await trio.sleep(1000)
        return world.handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    fed = Federation(FED, client, budget=5.0)
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="within 5 s"):
        await fed.read("f", 0, 10, len(DATA))
    assert trio.current_time() - started == pytest.approx(5.0)


async def test_a_federation_without_replicas_for_a_moment_is_asked_again(
    world: World, autojump_clock: trio.abc.Clock
) -> None:
    world.no_replica_answers = 2
    fed = make(world, retries=3)
    assert await fed.read("f", 0, 10, len(DATA)) == DATA[:10]
    assert [r.url.host for r in world.requests].count("fed.test") == 3
    world.no_replica_answers = 10
    fed.forget_target("f")
    with pytest.raises(UpstreamError, match="no replica can serve it"):
        await fed.read("f", 0, 10, len(DATA))


async def test_concurrent_first_reads_of_a_file_ask_the_federation_once(world: World) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.01)  # a round trip: the reads overlap
        return world.handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    fed = Federation(FED, client)
    results: dict[int, bytes | bytearray | memoryview] = {}

    async def read(start: int) -> None:
        results[start] = await fed.read("f", start, start + 1000, len(DATA))

    async with trio.open_nursery() as nursery:
        for start in (0, 3000, 6000):
            nursery.start_soon(read, start)
    assert {k: bytes(v) for k, v in results.items()} == {
        k: DATA[k : k + 1000] for k in (0, 3000, 6000)
    }
    hosts = [r.url.host for r in world.requests]
    assert hosts.count("fed.test") == 1
    assert hosts.count("store0.test") == 3


async def test_a_target_that_starts_redirecting_is_located_again(world: World) -> None:
    """A remembered replica that now answers 302 (it moved its data on): the
    federation is asked again and its redirect followed to the data."""
    original = world.handler

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "store0.test":
            world.requests.append(request)
            return httpx.Response(302, headers={"Location": world.replicas[1]})
        return original(request)

    world.handler = handler  # type: ignore[method-assign]
    fed = make(world)
    fed._remember("f", world.replicas[0])  # a target known from before
    assert await fed.read("f", 100, 200, len(DATA)) == DATA[100:200]
    hosts = [r.url.host for r in world.requests]
    assert hosts == ["store0.test", "fed.test", "store0.test", "store1.test"]
