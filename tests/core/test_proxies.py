"""CVMFS-style proxy lists: order, load balancing, failover."""

from __future__ import annotations

import random

import pytest

from davfed_fuse.proxies import ProxiesFailed, Proxy, first_working, proxy_order


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
