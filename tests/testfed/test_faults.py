"""Fault injection on nginx (``dav``) endpoints, and how the health checker reacts."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from davfed_testfed import TestFederation, TestFedError

MakeFed = Callable[..., TestFederation]
BIG = "data/big.bin"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        yield client


def direct(fed: TestFederation, relpath: str, index: int = 0) -> str:
    return fed.endpoints[index].base_url + relpath


def location(http: httpx.Client, fed: TestFederation, relpath: str) -> str:
    r = http.get(fed.file_url(relpath))
    assert r.status_code == 302
    return r.headers["Location"]


def test_down_refuses_connections_and_checker_flips(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client
) -> None:
    fed = make_testfed(testfed_tree, endpoints=2, health_period=30)
    fed.fault(0, "down")
    with pytest.raises(httpx.ConnectError):
        http.get(direct(fed, "hello.txt"))
    # Until the checker runs, the federation keeps redirecting to the dead endpoint.
    assert location(http, fed, "hello.txt") == direct(fed, "hello.txt", 0)
    assert fed.check_health() == [False, True]
    assert location(http, fed, "hello.txt") == direct(fed, "hello.txt", 1)
    fed.clear_faults()
    assert http.get(direct(fed, "hello.txt")).status_code == 200
    assert fed.check_health() == [True, True]
    assert location(http, fed, "hello.txt") == direct(fed, "hello.txt", 0)


def test_periodic_checker_flips_down_endpoint(testfed: TestFederation, http: httpx.Client) -> None:
    testfed.fault(1, "down")
    testfed.wait_health(1, online=False, timeout=5)
    r = http.get(testfed.file_url("hello.txt") + "?metalink")
    assert direct(testfed, "hello.txt", 1).encode() not in r.content
    testfed.clear_faults(1)
    testfed.wait_health(1, online=True, timeout=5)


def test_slow_delays_responses_and_goes_offline(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    testfed.fault(0, "slow", delay=0.8)
    started = time.monotonic()
    r = http.get(direct(testfed, "data/block.bin"), headers={"Range": "bytes=10-19"})
    assert time.monotonic() - started >= 0.8
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(testfed_files['data/block.bin'])}"
    assert r.content == testfed_files["data/block.bin"][10:20]
    testfed.wait_health(0, online=False, timeout=5)  # max_latency is 0.5 s
    assert location(http, testfed, "hello.txt") == direct(testfed, "hello.txt", 1)


def test_stall_hangs_after_k_bytes(
    testfed: TestFederation, testfed_files: dict[str, bytes]
) -> None:
    testfed.fault(0, "stall", after=65536)
    received = b""
    timeout = httpx.Timeout(10.0, read=1.0)
    with httpx.Client(timeout=timeout) as client, client.stream("GET", direct(testfed, BIG)) as r:
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(len(testfed_files[BIG]))
        with pytest.raises(httpx.ReadTimeout):
            for chunk in r.iter_raw():
                received += chunk
    assert received == testfed_files[BIG][:65536]
    # A stalled endpoint still answers HEAD, so the checker keeps it online.
    assert testfed.check_health()[0] is True


def test_cut_closes_after_k_bytes(
    testfed: TestFederation, tmp_path: Path, testfed_files: dict[str, bytes]
) -> None:
    testfed.fault(0, "cut", after=100_000)
    out = tmp_path / "cut.bin"
    result = subprocess.run(
        ["curl", "-sS", "-o", str(out), "-w", "%{http_code} %{size_download}",
         direct(testfed, BIG)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 18  # CURLE_PARTIAL_FILE
    assert result.stdout == "200 100000"
    assert out.read_bytes() == testfed_files[BIG][:100_000]
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(direct(testfed, BIG), timeout=10)


def test_status_fault_endpoint_wide_and_per_path(
    testfed: TestFederation, http: httpx.Client
) -> None:
    testfed.fault(2, "status", status=500, path="hello.txt")
    assert http.get(direct(testfed, "hello.txt", 2)).status_code == 500
    assert http.get(direct(testfed, "small/one.bin", 2)).status_code == 200
    assert testfed.check_health()[2] is True  # the checker's URL is not affected
    testfed.fault(2, "status", status=503)
    assert http.get(direct(testfed, "small/one.bin", 2)).status_code == 503
    testfed.wait_health(2, online=False, timeout=5)


def test_delete_replica_while_federation_lists_it(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    testfed.fault(0, "delete", path="data/block.bin")
    assert http.get(direct(testfed, "data/block.bin")).status_code == 404
    assert http.head(direct(testfed, "data/block.bin")).status_code == 404
    assert http.get(direct(testfed, "data/block.bin", 1)).content == testfed_files["data/block.bin"]
    assert http.get(direct(testfed, "hello.txt")).status_code == 200
    # The federation still lists it and still redirects to the endpoint that lost it.
    assert location(http, testfed, "data/block.bin") == direct(testfed, "data/block.bin", 0)
    r = http.request("PROPFIND", testfed.file_url("data/block.bin"), headers={"Depth": "0"})
    assert r.status_code == 207
    assert testfed.check_health()[0] is True
    testfed.clear_faults()
    assert http.get(direct(testfed, "data/block.bin")).status_code == 200


def test_resize_replica(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    original = testfed_files["data/block.bin"]
    testfed.fault(0, "resize", path="data/block.bin", size=1000)
    r = http.get(direct(testfed, "data/block.bin"))
    assert r.status_code == 200 and r.content == original[:1000]
    testfed.fault(1, "resize", path="data/block.bin")  # default: half the size
    assert len(http.get(direct(testfed, "data/block.bin", 1)).content) == len(original) // 2
    testfed.fault(2, "resize", path="hello.txt", size=100)
    grown = http.get(direct(testfed, "hello.txt", 2)).content
    assert len(grown) == 100 and grown.startswith(testfed_files["hello.txt"])
    r = http.request("PROPFIND", testfed.file_url("data/block.bin"), headers={"Depth": "0"})
    assert f"<lp1:getcontentlength>{len(original)}<".encode() in r.content


def test_bytes_sent_counts_body_bytes(testfed: TestFederation, http: httpx.Client) -> None:
    before = testfed.bytes_sent(2)
    http.get(direct(testfed, BIG, 2), headers={"Range": "bytes=0-999"})
    http.head(direct(testfed, BIG, 2))
    deadline = time.monotonic() + 2
    while testfed.bytes_sent(2) < before + 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert testfed.bytes_sent(2) == before + 1000


def test_bad_fault_requests(testfed: TestFederation) -> None:
    with pytest.raises(TestFedError, match="unknown fault kind"):
        testfed.fault(0, "explode")
    with pytest.raises(TestFedError, match="needs a path"):
        testfed.fault(0, "delete")
    with pytest.raises(TestFedError, match="no file"):
        testfed.fault(0, "delete", path="no/such/file")
    with pytest.raises(TestFedError, match="no endpoint"):
        testfed.fault(7, "down")
    with pytest.raises(TestFedError, match="signed-URL"):
        testfed.fault(0, "validity", seconds=5)
    assert testfed.state()["endpoints"][0]["faults"] == []
