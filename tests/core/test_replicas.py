"""The replica policy (net/replicas.py): remembered targets stay bounded, penalties expire."""

from __future__ import annotations

from davfed_fuse.net.replicas import Penalties, Targets, next_replica


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_target_without_an_expiry_leaves_after_the_ttl() -> None:
    clock = Clock()
    targets = Targets(clock, ttl=60.0)
    targets.remember("f", "http://store0/ep/f")
    clock.now += 59.0
    assert targets.get("f") == "http://store0/ep/f"
    clock.now += 1.0
    assert targets.get("f") is None
    assert len(targets) == 0


def test_a_signed_target_leaves_when_it_is_due_for_renewal() -> None:
    clock = Clock(1000.0)
    targets = Targets(clock, ttl=10_000.0)
    targets.remember("f", "http://store0/ep/f?Expires=1100&Signature=s")
    clock.now = 1030.0
    assert targets.get("f") is not None
    clock.now = 1060.0  # past the renewal point (halfway), well before the TTL
    assert targets.get("f") is None


def test_targets_never_grow_past_their_cap_nor_keep_expired_ones() -> None:
    clock = Clock()
    targets = Targets(clock, ttl=60.0, maxsize=100)
    for i in range(20_000):
        targets.remember(f"f{i}", f"http://store0/ep/f{i}")
    assert len(targets) == 100
    assert targets.get("f19999") is not None and targets.get("f0") is None
    clock.now += 61.0
    assert len(targets) == 0


def test_forget_drops_one_file() -> None:
    targets = Targets(Clock())
    targets.remember("f", "http://a/f")
    targets.remember("g", "http://a/g")
    targets.forget("f")
    targets.forget("missing")
    assert (targets.get("f"), targets.get("g"), len(targets)) == (None, "http://a/g", 1)


def test_penalties_expire_and_the_next_replica_avoids_them() -> None:
    clock = Clock()
    penalties = Penalties(clock, penalty=30.0)
    replicas = ["http://a:1/f", "http://b:1/f", "http://c:1/f"]
    penalties.penalise("http://a:1/other")  # by endpoint, not by URL
    assert "http://a:1/f" in penalties
    assert next_replica(replicas, set(), penalties) == "http://b:1/f"
    assert next_replica(replicas, {("http", "b", 1), ("http", "c", 1)}, penalties) == replicas[0]
    assert next_replica(replicas, {("http", h, 1) for h in "abc"}, penalties) is None
    clock.now += 30.0
    assert "http://a:1/f" not in penalties
    assert next_replica(replicas, set(), penalties) == "http://a:1/f"
