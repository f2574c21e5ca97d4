"""Faults injected into a real federation while a real mount reads from it.

Each test asserts the bytes a reader got (by checksum) and how long it waited:
a reader gets the file's bytes or a clear errno, quickly, and never hangs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import MiB, Mounter, requires_fuse, write_big
from tests.testfed_fixtures import reset_faults

pytestmark = [pytest.mark.mount, requires_fuse]

SIZE = 64 * MiB
NAME = "inputs/f64.bin"
#: Short deadlines so failover is quick: 2 s per socket read, a 6 s budget per FUSE request.
FAST = "timeout=2,connect_timeout=1,retries=2"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "inputs").mkdir()
    write_big(root / NAME, SIZE, 42)
    return root


@pytest.fixture(scope="module")
def expected(data: Path) -> str:
    return hashlib.sha256((data / NAME).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fed(data: Path) -> Iterator[TestFederation]:
    with TestFederation(data, endpoints=3, health_period=0.2, max_latency=0.5) as federation:
        yield federation


@pytest.fixture
def clean(fed: TestFederation) -> Iterator[TestFederation]:
    yield fed
    reset_faults(fed)


def timed_sha256(
    path: Path,
    chunk: int = MiB,
    pause_after: int | None = None,
    pause: Callable[[], None] | None = None,
) -> tuple[str, float]:
    digest = hashlib.sha256()
    started = time.monotonic()
    done = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            digest.update(block)
            done += len(block)
            if pause is not None and pause_after is not None and done == pause_after:
                pause()
    return digest.hexdigest(), time.monotonic() - started


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("cut", {"after": MiB}),
        ("stall", {"after": 512 * 1024}),
        ("status", {"status": 503}),
        ("status", {"status": 500}),
        ("delete", {"path": NAME}),
        ("resize", {"path": NAME}),
        ("slow", {"delay": 5.0}),
    ],
)
def test_a_faulty_first_replica_is_survived(
    clean: TestFederation, mounter: Mounter, expected: str, kind: str, params: dict[str, object]
) -> None:
    mnt = mounter(clean.url, "-o", FAST)
    os.stat(mnt / NAME)
    clean.fault(0, kind, **params)
    digest, waited = timed_sha256(mnt / NAME)
    assert digest == expected
    assert waited < 20, f"the reader waited {waited:.1f} s"


def test_an_endpoint_killed_mid_read(
    clean: TestFederation, mounter: Mounter, expected: str
) -> None:
    mnt = mounter(clean.url, "-o", FAST)
    digest, waited = timed_sha256(
        mnt / NAME, pause_after=8 * MiB, pause=lambda: clean.fault(0, "down")
    )
    assert digest == expected
    assert waited < 20


def test_all_replicas_down_gives_an_errno_in_time_then_recovers(
    clean: TestFederation, mounter: Mounter, expected: str
) -> None:
    mnt = mounter(clean.url, "-o", FAST)
    os.stat(mnt / NAME)
    for endpoint in clean.endpoints:
        clean.fault(endpoint.index, "down")
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        (mnt / NAME).read_bytes()
    waited = time.monotonic() - started
    assert failed.value.errno in (errno.EIO, errno.ETIMEDOUT)
    assert waited < 15, f"the reader waited {waited:.1f} s for its errno"
    clean.clear_faults()
    for endpoint in clean.endpoints:  # the federation itself must see them again
        clean.wait_health(endpoint.index, online=True, timeout=10)
    digest, _ = timed_sha256(mnt / NAME)
    assert digest == expected, "the mount recovered without a remount"


def test_a_federation_that_goes_away_and_comes_back(
    data: Path, mounter: Mounter, expected: str
) -> None:
    first = TestFederation(data, endpoints=2).start()
    port = first.port
    try:
        mnt = mounter(first.url, "-o", f"{FAST},attr_timeout=0,entry_timeout=0,dir_timeout=0")
        assert os.listdir(mnt / "inputs") == ["f64.bin"]
    finally:
        first.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        os.listdir(mnt / "inputs")
    assert failed.value.errno in (errno.EIO, errno.ETIMEDOUT, errno.ENOENT)
    assert time.monotonic() - started < 10, "ls failed fast"
    with TestFederation(data, endpoints=2, port=port) as second:
        assert second.url == first.url
        assert os.listdir(mnt / "inputs") == ["f64.bin"]
        digest, _ = timed_sha256(mnt / NAME)
        assert digest == expected


def test_signed_urls_expiring_mid_read_are_renewed(
    data: Path, mounter: Mounter, expected: str
) -> None:
    with TestFederation(
        data, endpoints=2, kinds=["s3v4", "azure"], signature_validity=3, sign_cache_ttl=1
    ) as signed:
        mnt = mounter(signed.url, "-o", f"{FAST},readahead=4M")
        digest, waited = timed_sha256(
            mnt / NAME, chunk=4 * MiB, pause_after=4 * MiB, pause=lambda: time.sleep(4)
        )
        assert digest == expected
        assert waited < 25


def test_concurrent_readers_during_faults_all_get_the_right_bytes(
    clean: TestFederation, mounter: Mounter, expected: str
) -> None:
    mnt = mounter(clean.url, "-o", FAST)
    results: list[str] = []

    def reader() -> None:
        results.append(timed_sha256(mnt / NAME, chunk=256 * 1024)[0])

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    clean.fault(0, "cut", after=MiB)
    clean.fault(1, "status", status=502)
    for thread in threads:
        thread.join(60)
    assert results == [expected] * 4
