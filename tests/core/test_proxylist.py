"""The run-time proxy list: CVMFS's groups, load balancing, failover and failback."""

from __future__ import annotations

import random

import pytest
import trio

from davfed_fuse.net.proxies import Proxy
from davfed_fuse.net.proxylist import (
    ProxyList,
    parse_groups,
    proxy_fault,
    return_to_first_group,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_groups_members_and_direct_are_parsed() -> None:
    assert parse_groups("http://a:1|http://b:1;http://c:1;DIRECT") == [
        ["http://a:1", "http://b:1"],
        ["http://c:1"],
        [None],
    ]
    for bad in ("http://a:1;;DIRECT", "http://a:1|", "ftp://x:1", "http://u:p@a:1", ""):
        with pytest.raises(ValueError):
            parse_groups(bad)


def test_members_of_a_group_share_the_load() -> None:
    picks = {
        ProxyList("http://a:1|http://b:1;DIRECT", rng=random.Random(s)).current() for s in range(40)
    }
    assert picks == {"http://a:1", "http://b:1"}


def test_a_failure_moves_every_later_request_through_the_group_then_the_next() -> None:
    clock = Clock()
    plist = ProxyList("http://a:1|http://b:1;http://c:1;DIRECT", clock=clock)
    first = plist.current()
    plist.fail(first, "refused")
    second = plist.current()
    assert {first, second} == {"http://a:1", "http://b:1"}
    plist.fail("http://z:9" if second != "http://z:9" else None, "stale")  # not current: no move
    assert plist.current() == second
    plist.fail(second, "timed out")
    assert plist.current() == "http://c:1"
    plist.fail("http://c:1", "X-Squid-Error")
    assert plist.current() is None  # DIRECT
    plist.fail(None, "refused")
    assert plist.current() in ("http://a:1", "http://b:1")  # wraps round
    info = plist.info()
    assert info["failovers"] == 4 and info["failures"]["DIRECT"] == 1


def test_one_request_tries_each_proxy_once_current_first() -> None:
    plist = ProxyList("http://a:1;http://b:1|http://c:1;DIRECT", rng=random.Random(1))
    plist.fail("http://a:1", "refused")
    order = plist.attempt_order()
    assert order[0] in ("http://b:1", "http://c:1")
    assert sorted(map(str, order)) == sorted(
        map(str, ["http://a:1", "http://b:1", "http://c:1", None])
    )
    assert order[-1] == "http://a:1"  # wrapping round: the first group last


def test_set_info_rebalance_api() -> None:
    clock = Clock()
    plist = ProxyList("http://a:1;DIRECT", clock=clock, reset_after=300)
    plist.fail("http://a:1", "refused")
    info = plist.info()
    assert info["current"] == "DIRECT" and info["first_group_retry_in"] == 300
    with pytest.raises(ValueError):
        plist.set("http://x:1;;")
    assert plist.spec == "http://a:1;DIRECT"  # a bad list changes nothing
    plist.set("http://x:1|http://y:1;DIRECT")
    assert plist.current() in ("http://x:1", "http://y:1") and plist.info()["group"] == 0
    assert plist.rebalance() in ("http://x:1", "http://y:1")


def test_proxy_faults_are_told_from_the_servers_answers() -> None:
    def headers(**h: str) -> object:
        return {k.replace("_", "-"): v for k, v in h.items()}.get

    assert proxy_fault(503, headers(X_Squid_Error="ERR_CONNECT_FAIL 111")) is not None  # type: ignore[arg-type]
    assert proxy_fault(500, headers(Proxy_Status="squid; error=http_protocol_error")) is not None  # type: ignore[arg-type]
    assert proxy_fault(502, headers()) is not None  # type: ignore[arg-type]
    assert proxy_fault(504, headers()) is not None  # type: ignore[arg-type]
    for status in (403, 404, 500, 503):  # the endpoint's own answers, passed through
        assert proxy_fault(status, headers(Proxy_Status="squid")) is None  # type: ignore[arg-type]


async def test_the_first_group_comes_back_after_reset_after_once_probed() -> None:
    clock = Clock()
    plist = ProxyList("http://sq:1;DIRECT", clock=clock, reset_after=10)
    plist.use(None)  # mounted while the proxy was down: DIRECT
    up = False
    probed: list[Proxy] = []

    async def probe(proxy: Proxy) -> None:
        probed.append(proxy)
        if not up:
            raise ConnectionRefusedError("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: return_to_first_group(plist, probe, check_every=0.01))
        await trio.sleep(0.05)
        assert probed == [] and plist.current() is None  # not before reset_after
        clock.now += 10
        await trio.sleep(0.05)
        assert probed == ["http://sq:1"] and plist.current() is None  # still down
        up = True
        clock.now += 10
        await trio.sleep(0.05)
        assert plist.current() == "http://sq:1"
        nursery.cancel_scope.cancel()
