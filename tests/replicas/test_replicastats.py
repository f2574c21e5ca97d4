"""The pure parts of replica choice: the measurements, the ranking, the spread, adler32."""

from __future__ import annotations

import os
import zlib

import pytest

from davfed_fuse.net.replicastats import Measurements, Spread, spread_weights
from davfed_fuse.net.wholefile import Assembly, adler32_combine, parse_adler32

NEAR = "http://near.example:80/ep/f?sig=1"
FAR = "http://far.example:80/ep/f?sig=2"
OTHER = "http://other.example:80/ep/f"
MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rank_prefers_measured_speed_over_the_federation_order() -> None:
    m = Measurements(Clock())
    m.record(FAR, 1, 0.080)
    m.record(NEAR, 1, 0.010)
    assert m.rank([FAR, NEAR, OTHER], 4 * MiB) == [NEAR, FAR, OTHER]


def test_rank_keeps_the_federation_order_without_figures() -> None:
    m = Measurements(Clock())
    assert m.rank([FAR, NEAR], 4 * MiB) == [FAR, NEAR]


def test_a_slow_throughput_outweighs_a_short_round_trip_for_bulk() -> None:
    m = Measurements(Clock())
    m.record(NEAR, 1, 0.005)
    m.record(FAR, 1, 0.040)
    m.record(NEAR, 4 * MiB, 0.005 + 4 * MiB / 10e6)  # 10 MB/s
    m.record(FAR, 4 * MiB, 0.040 + 4 * MiB / 100e6)  # 100 MB/s
    assert m.rank([NEAR, FAR], 4 * MiB)[0] == FAR
    assert m.rank([NEAR, FAR], 4096)[0] == NEAR


def test_a_link_that_gets_slow_loses_its_place_within_a_few_transfers() -> None:
    m = Measurements(Clock())
    m.record(NEAR, 1, 0.001)
    m.record(FAR, 1, 0.150)
    for _ in range(3):
        m.record(NEAR, 4 * MiB, 0.01)
    assert m.rank([FAR, NEAR], 4 * MiB)[0] == NEAR
    transfers = 0
    while m.rank([FAR, NEAR], 4 * MiB)[0] == NEAR:
        m.record_first_byte(NEAR, 0.3)  # every answer now waits 0.3 s before its head
        m.record(NEAR, 4 * MiB, 0.31)
        transfers += 1
        assert transfers < 5
    assert transfers >= 1


def test_failures_push_a_host_back_and_stale_figures_need_a_probe() -> None:
    clock = Clock()
    m = Measurements(clock, stale=30)
    m.record(NEAR, 1, 0.001)
    assert not m.needs_probe(NEAR)
    assert m.needs_probe(FAR)
    m.record(NEAR, 4 * MiB, 2.0, error="timed out")
    figures = m.figures(NEAR)
    assert figures is not None and figures.latency is not None and figures.latency > 0.5
    clock.now += 31
    assert m.needs_probe(NEAR)


def test_spread_follows_the_weights() -> None:
    spread = Spread([NEAR, FAR])
    picks = [spread.pick({NEAR: 2.0, FAR: 1.0}, MiB) for _ in range(30)]
    assert picks.count(NEAR) == 20 and picks.count(FAR) == 10
    assert spread.pick({}, MiB) is None


def test_spread_weights_leave_out_a_much_slower_replica() -> None:
    m = Measurements(Clock())
    for url, latency in ((NEAR, 0.005), (FAR, 0.006), (OTHER, 0.5)):
        m.record(url, 1, latency)
        m.record(url, 4 * MiB, latency + 4 * MiB / 100e6)
    weights = spread_weights(m, [NEAR, FAR, OTHER], 4 * MiB)
    assert set(weights) == {NEAR, FAR}


def test_adler32_combine_matches_zlib() -> None:
    a, b = os.urandom(70000), os.urandom(123457)
    combined = adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b))
    assert combined == zlib.adler32(a + b)


def test_assembly_checksum_needs_an_exact_cover_in_any_order() -> None:
    data = os.urandom(3 * 1000 + 17)
    assembly = Assembly(len(data))
    assembly.add(2000, data[2000:], "b")
    assert assembly.checksum() is None
    assembly.add(0, data[:1000], "a")
    assert assembly.checksum() is None
    assembly.add(1000, data[1000:2000], "a")
    assert assembly.checksum() == f"{zlib.adler32(data):08x}"
    assert assembly.sources == {"a", "b"}


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("adler32=0A1B2C3D", "0a1b2c3d"),
        ("md5=abc==, ADLER32=1b2c3d", "001b2c3d"),
        ("md5=abc==", None),
        ("adler32=xyz", None),
        ("", None),
    ],
)
def test_parse_adler32(header: str, value: str | None) -> None:
    assert parse_adler32(header) == value
