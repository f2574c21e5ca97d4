"""The HTTP layer against an in-process federation (httpx.MockTransport)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
import trio

from davfed_fuse.errors import (
    BadResponse,
    Forbidden,
    IntegrityError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from davfed_fuse.remote import Federation, parse_content_range

DATA = bytes(range(256)) * 40  # 10240 bytes
FED = "http://fed.test:8000/myfed/"


class World:
    """A federation that redirects ``/myfed/f`` to a replica, with switchable behaviour."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.replica = "http://store.test:9000/ep/f"
        self.replica_status: Callable[[int], int | None] = lambda n: None
        self.replica_hits = 0
        self.total = len(DATA)
        self.body_delta = 0  # bytes added to (or cut from) each ranged body

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.url.host
        if host == "fed.test":
            if request.url.path == "/myfed/missing":
                return httpx.Response(404)
            if request.url.path.startswith("/myfed/hop"):
                hop = int(request.url.path.removeprefix("/myfed/hop"))
                return httpx.Response(302, headers={"Location": f"/myfed/hop{hop + 1}"})
            if request.url.path == "/myfed/ftp":
                return httpx.Response(302, headers={"Location": "ftp://x/y"})
            return httpx.Response(302, headers={"Location": self.replica})
        self.replica_hits += 1
        forced = self.replica_status(self.replica_hits)
        if forced is not None:
            return httpx.Response(forced)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["Range"])
        assert match
        first, last = int(match[1]), int(match[2])
        body = DATA[first : last + 1]
        body = (
            body + b"x" * self.body_delta
            if self.body_delta > 0
            else body[: len(body) + self.body_delta]
        )
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes {first}-{min(last, len(DATA) - 1)}/{self.total}"},
            stream=httpx.ByteStream(body),  # a stream, as on the wire: read once
        )


@pytest.fixture
async def world() -> World:
    return World()


def make(world: World, now: list[float] | None = None) -> Federation:
    client = httpx.AsyncClient(transport=httpx.MockTransport(world.handler))
    clock = (lambda: now[0]) if now is not None else (lambda: 1e9)
    return Federation(
        FED, client, federation_headers=lambda: {"Authorization": "Bearer T"}, wall_clock=clock
    )


async def test_read_follows_the_redirect_once_per_file(world: World) -> None:
    fed = make(world)
    assert await fed.read("f", 0, 100, len(DATA)) == DATA[:100]
    assert await fed.read("f", 5000, 6000, len(DATA)) == DATA[5000:6000]
    hosts = [r.url.host for r in world.requests]
    assert hosts == ["fed.test", "store.test", "store.test"]


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
    world.replica = "http://store.test:9000/ep/f?Expires=1100&Signature=s"
    fed = make(world, now)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1030.0  # before renewal (halfway: 1050)
    await fed.read("f", 0, 10, len(DATA))
    now[0] = 1060.0
    await fed.read("f", 0, 10, len(DATA))
    assert [r.url.host for r in world.requests].count("fed.test") == 2


async def test_a_failing_target_is_resolved_again_once(world: World) -> None:
    fed = make(world)
    await fed.read("f", 0, 10, len(DATA))
    world.replica_status = lambda n: 403 if n == 2 else None
    assert await fed.read("f", 10, 20, len(DATA)) == DATA[10:20]
    assert [r.url.host for r in world.requests].count("fed.test") == 2


@pytest.mark.parametrize(
    ("status", "error"), [(403, Forbidden), (404, NotFound), (503, UpstreamError)]
)
async def test_a_target_that_keeps_failing_gives_its_error(
    world: World, status: int, error: type[Exception]
) -> None:
    world.replica_status = lambda n: status
    with pytest.raises(error):
        await make(world).read("f", 0, 10, len(DATA))
    assert world.replica_hits == 2


async def test_a_replica_of_another_size_is_refused(world: World) -> None:
    world.total = len(DATA) - 1
    with pytest.raises(IntegrityError, match="federation says"):
        await make(world).read("f", 0, 10, len(DATA))


async def test_missing_file_and_bad_redirects(world: World) -> None:
    fed = make(world)
    with pytest.raises(NotFound):
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


# Abandoning a body half-read leaves httpx's inner stream generators to the
# garbage collector (the connection itself is closed by response.aclose()).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_body_of_the_wrong_length_is_refused(world: World, delta: int) -> None:
    world.body_delta = delta
    with pytest.raises(IntegrityError, match="body"):
        await make(world).read("f", 0, 100, len(DATA))
    assert world.replica_hits == 2, "the federation was asked again before failing"


async def test_a_slow_target_costs_at_most_the_budget(
    world: World, autojump_clock: trio.abc.Clock
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.host == "store.test":
            await trio.sleep(1000)
        return world.handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    fed = Federation(FED, client, budget=5.0)
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout, match="within 5 s"):
        await fed.read("f", 0, 10, len(DATA))
    assert trio.current_time() - started == pytest.approx(5.0)
