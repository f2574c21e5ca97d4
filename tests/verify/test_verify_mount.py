"""``davfed verify`` on a real davfed mount of the test federation."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from davfed_fuse.system.mounttable import find_mount
from davfed_testfed import TestFederation
from davfed_testfed.digests import corrupt
from tests.mounting import MiB, Mounter, requires_fuse, write_big

pytestmark = [pytest.mark.mount, requires_fuse]

MakeFed = Callable[..., TestFederation]
NAME = "inputs/f9.bin"
SIZE = 9 * MiB + 123
ODD = "inputs/odd name #1.txt"
FAST = "timeout=2,connect_timeout=1,retries=2"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    (root / "inputs").mkdir()
    write_big(root / NAME, SIZE, 9)
    (root / ODD).write_bytes(b"odd content\n")
    return root


def adler32(path: Path) -> str:
    return f"{zlib.adler32(path.read_bytes()):08x}"


def davfed_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "davfed_fuse", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_intact_files_are_ok(make_testfed: MakeFed, data: Path, mounter: Mounter) -> None:
    fed = make_testfed(data)
    mnt = mounter(fed.url, "-o", FAST)
    entry = find_mount(mnt)
    assert entry is not None
    assert entry.source.rstrip("/") == fed.url.rstrip("/")  # where verify finds the URL
    result = davfed_verify(str(mnt / NAME), str(mnt / ODD))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"OK        {mnt / NAME} adler32={adler32(data / NAME)}",
        f"OK        {mnt / ODD} adler32={adler32(data / ODD)}",
    ]
    md5 = davfed_verify("--algorithm", "md5", str(mnt / NAME))
    assert md5.returncode == 0, md5.stdout + md5.stderr
    assert md5.stdout.startswith(f"OK        {mnt / NAME} md5=")


def test_wrong_checksum_from_the_federation_is_a_mismatch(
    make_testfed: MakeFed, data: Path, mounter: Mounter
) -> None:
    fed = make_testfed(data)
    mnt = mounter(fed.url, "-o", FAST)
    assert (mnt / NAME).read_bytes() == (data / NAME).read_bytes()  # cached, and right
    fed.fault(0, "digest", path=NAME)  # the checksum endpoint reports a wrong value
    result = davfed_verify(str(mnt / ODD), str(mnt / NAME))
    assert result.returncode == 2, result.stdout + result.stderr
    good = adler32(data / NAME)
    ok, mismatch = result.stdout.splitlines()
    assert ok.startswith("OK ")
    assert mismatch.startswith(f"MISMATCH  {mnt / NAME} adler32: ")
    assert f"federation {corrupt(good, 'adler32')}, read through davfed {good}" in mismatch


def test_corrupt_replica_on_the_checksum_endpoint_is_a_mismatch(
    make_testfed: MakeFed, data: Path, mounter: Mounter
) -> None:
    """A replica of the wrong size on the endpoint that checksums: davfed reads the right
    bytes from another replica, and verify reports that the federation's copy differs."""
    fed = make_testfed(data, checksum_endpoints=[0])
    mnt = mounter(fed.url, "-o", FAST)
    fed.fault(0, "resize", path=NAME, size=SIZE - 1000)
    result = davfed_verify(str(mnt / NAME))
    assert result.returncode == 2, result.stdout + result.stderr
    truncated = f"{zlib.adler32((data / NAME).read_bytes()[: SIZE - 1000]):08x}"
    assert f"federation {truncated}, read through davfed {adler32(data / NAME)}" in result.stdout


def test_no_checksum_offered(make_testfed: MakeFed, data: Path, mounter: Mounter) -> None:
    fed = make_testfed(data, checksum_endpoints=[])
    mnt = mounter(fed.url, "-o", FAST)
    result = davfed_verify(str(mnt / NAME))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"NO CHECKSUM offered  {mnt / NAME} (")


def test_checksum_endpoint_offline_is_an_error(
    make_testfed: MakeFed, data: Path, mounter: Mounter
) -> None:
    fed = make_testfed(data, checksum_endpoints=[1])
    mnt = mounter(fed.url, "-o", FAST)
    fed.fault(1, "down")
    fed.wait_health(1, online=False)
    result = davfed_verify(str(mnt / NAME))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith(f"ERROR     {mnt / NAME}: ")
    assert "answered 404" in result.stdout
    fed.clear_faults()
    fed.wait_health(1, online=True)
    assert davfed_verify(str(mnt / NAME)).returncode == 0


def test_usage_errors(make_testfed: MakeFed, data: Path, mounter: Mounter) -> None:
    fed = make_testfed(data)
    mnt = mounter(fed.url, "-o", FAST)
    for args, message in [
        ((), "the following arguments are required"),
        ((str(data / NAME),), "not in a davfed mount"),
        ((str(mnt / "inputs"),), "is a directory"),
        ((str(mnt / "nope.bin"),), "no such file"),
        (("--timeout", "0", str(mnt / NAME)), "--timeout must be positive"),
    ]:
        result = davfed_verify(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr
        assert result.stdout == ""
