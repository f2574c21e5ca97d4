"""CVMFS-style proxy lists: order, load balancing, failover."""

from __future__ import annotations

import random

import pytest

from davfed_fuse.net.proxies import ProxiesFailed, Proxy, first_working, proxy_order, proxy_spec


def test_groups_fail_over_in_order_and_members_are_shuffled() -> None:
    spec = "http://a:3128|http://b:3128;http://c:3128;DIRECT"
    orders = {tuple(proxy_order(spec, random.Random(seed))) for seed in range(50)}
    assert orders == {
        ("http://a:3128", "http://b:3128", "http://c:3128", None),
        ("http://b:3128", "http://a:3128", "http://c:3128", None),
    }
    assert proxy_order("DIRECT") == [None]
    assert proxy_order("http://a:1;http://a:1") == ["http://a:1"]


async def test_the_first_working_proxy_is_chosen() -> None:
    tried: list[Proxy] = []

    async def probe(proxy: Proxy) -> None:
        tried.append(proxy)
        if proxy != "http://c:3128":
            raise ConnectionRefusedError("refused")

    chosen = await first_working(["http://a:3128", "http://c:3128", None], probe)
    assert chosen == "http://c:3128"
    assert tried == ["http://a:3128", "http://c:3128"]


async def test_no_working_proxy_names_every_one() -> None:
    async def probe(proxy: Proxy) -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(ProxiesFailed, match=r"http://a:1: refused; DIRECT: refused"):
        await first_working(["http://a:1", None], probe)


def test_the_environment_is_read_like_curl() -> None:
    env = {"https_proxy": "http://sq:3128", "HTTP_PROXY": "http://up:3128", "no_proxy": ".cern.ch"}
    assert proxy_spec("http://given:1", "https://fed.example/x", env) == "http://given:1"
    assert proxy_spec(None, "https://fed.example/x", env) == "http://sq:3128"
    assert proxy_spec(None, "http://fed.example/x", env) == "http://up:3128"
    assert proxy_spec(None, "https://dynafed.cern.ch/x", env) is None
    assert proxy_spec(None, "https://127.0.0.1:8443/x", env) is None
    assert proxy_spec(None, "https://fed.example/x", {"ALL_PROXY": "http://a:1"}) == "http://a:1"
    assert proxy_spec(None, "https://fed.example/x", {**env, "NO_PROXY": "*"}) == "http://sq:3128"
    assert (
        proxy_spec(None, "https://fed.example/x", {"https_proxy": "http://s:1", "no_proxy": "*"})
        is None
    )
    assert proxy_spec(None, "https://fed.example/x", {}) is None
