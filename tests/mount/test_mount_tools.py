"""mount(8), fstab, umount and bad input, with the helper installed where mount(8) looks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.system.mounttable import mounts_at
from davfed_testfed import TestFederation
from tests.mounting import (
    REPO,
    Mounter,
    requires_fuse,
    run_helper,
    the_daemon,
    unmount,
    wait_until,
)

pytestmark = [pytest.mark.mount, requires_fuse]

SBIN = Path("/sbin")


def mounts_on(path: Path) -> int:
    return len(mounts_at(path))


@pytest.fixture
def installed_helper() -> Iterator[None]:
    """``davfed install-helper``, undone afterwards if it was not there before."""
    was_there = (SBIN / "mount.davfed").exists()
    davfed = [sys.executable, "-m", "davfed_fuse"]
    subprocess.run([*davfed, "install-helper"], check=True, capture_output=True, cwd=REPO)
    try:
        yield
    finally:
        if not was_there:
            subprocess.run([*davfed, "install-helper", "--uninstall"], capture_output=True)


@pytest.mark.usefixtures("installed_helper")
def test_mount_t_davfed_and_umount(federation: TestFederation, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "davfed", federation.url, str(mnt), "-o", f"cache_dir={tmp_path}/c"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert mounts_on(mnt) == 1
        (entry,) = mounts_at(mnt)
        assert entry.fstype == "fuse.davfed"
        assert entry.source == federation.url
        assert (mnt / "file-4096.bin").stat().st_size == 4096
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
        assert mounts_on(mnt) == 0
    finally:
        unmount(mnt)


@pytest.mark.usefixtures("installed_helper")
def test_fstab_mount_a_twice_gives_one_mount(federation: TestFederation, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    options = (
        f"ro,_netdev,nofail,x-systemd.mount-timeout=120,comment=cloudconfig,cache_dir={tmp_path}/c"
    )
    fstab.write_text(f"# test fstab\n{federation.url} {mnt} davfed {options} 0 0\n")
    try:
        for _ in range(2):
            subprocess.run(
                ["mount", "-T", str(fstab), "-a"], check=True, capture_output=True, timeout=60
            )
            assert mounts_on(mnt) == 1
        assert (mnt / "sub" / "deeper" / "leaf.txt").read_text() == "leaf\n"
    finally:
        unmount(mnt)
    assert mounts_on(mnt) == 0


@pytest.mark.parametrize(
    ("url", "options", "code", "message"),
    [
        ("ftp://127.0.0.1/x/", "", 1, "http"),
        ("http://127.0.0.1:1/myfed/", "", 32, "127.0.0.1:1"),
        ("FED", "cache_dir=/tmp/x,frobnicate=1", 1, "frobnicate"),
        ("FED", "cache_size=lots", 1, "cache_size"),
    ],
)
def test_bad_input_fails_cleanly(
    federation: TestFederation, tmp_path: Path, url: str, options: str, code: int, message: str
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["-o", options] if options else []
    result = run_helper(federation.url if url == "FED" else url, mnt, *args, timeout=60)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert mounts_on(mnt) == 0


def test_a_missing_mountpoint_fails_with_32(federation: TestFederation, tmp_path: Path) -> None:
    result = run_helper(federation.url, tmp_path / "nowhere")
    assert result.returncode == 32
    assert "does not exist" in result.stderr


def test_mounting_the_same_url_again_is_a_no_op(
    federation: TestFederation, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    again = run_helper(federation.url, mnt)
    assert again.returncode == 0
    assert "already mounted" in again.stderr
    assert mounts_on(mnt) == 1


def test_a_dead_daemon_is_detached_before_remounting(
    federation: TestFederation, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    os.kill(the_daemon(mnt), signal.SIGKILL)
    with pytest.raises(OSError) as dead:
        os.listdir(mnt)
    # The first request after the death is ECONNABORTED, later ones ENOTCONN.
    assert dead.value.errno in (errno.ECONNABORTED, errno.ENOTCONN)
    mounter(federation.url, mountpoint=mnt)
    assert mounts_on(mnt) == 1
    assert (mnt / "file-1.bin").read_bytes() == (federation.data_dir / "file-1.bin").read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_cleanly(
    federation: TestFederation, mounter: Mounter, signum: int
) -> None:
    mnt = mounter(federation.url)
    pid = the_daemon(mnt)
    os.kill(pid, signum)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 20), "the daemon did not exit"
    assert mounts_on(mnt) == 0, "the daemon left its mount behind"


def test_a_denied_file_is_eacces(federation: TestFederation, mounter: Mounter) -> None:
    mnt = mounter(federation.url)
    for index in range(len(federation.endpoints)):
        federation.fault(index, "status", status=403, path="file-4095.bin")
    try:
        with pytest.raises(PermissionError):
            (mnt / "file-4095.bin").read_bytes()
        assert (mnt / "file-4095.bin").stat().st_size == 4095, "stat still works"
    finally:
        federation.clear_faults()
