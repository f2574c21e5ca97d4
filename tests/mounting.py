"""Helpers and fixtures for tests that mount a real davfed filesystem.

Every mount made with :func:`mounter` is unmounted afterwards, also when a test fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from davfed_fuse.system.mounttable import daemon_pid, find_mount

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "bin" / "mount.davfed"
MiB = 1 << 20

#: Names a federation must carry through encoding and decoding unchanged.
ODD_NAMES = ["with space.txt", "hash#tag", "question?mark", "per%cent", "ünïcödé-αβγ.dat"]


def fuse_available() -> bool:
    return (
        os.path.exists("/dev/fuse")
        and os.geteuid() == 0
        and shutil.which("fusermount3") is not None
    )


requires_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse, root and fuse3")


def pattern(size: int, seed: int) -> bytes:
    """Deterministic bytes that differ in every 16-byte cell (offsets are checkable)."""
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest() * (MiB // 32)
    out = bytearray()
    cell = 0
    while len(out) < size:
        chunk = bytearray(block)
        chunk[:8] = cell.to_bytes(8, "little")
        out += chunk
        cell += 1
    return bytes(out[:size])


def write_big(path: Path, size: int, seed: int) -> None:
    """A file of ``size`` bytes, written a MiB at a time, each MiB distinct."""
    base = hashlib.sha256(seed.to_bytes(8, "little")).digest() * (MiB // 32)
    with open(path, "wb") as f:
        for index in range(0, size, MiB):
            chunk = index.to_bytes(8, "little") + base[8:]
            f.write(chunk[: min(MiB, size - index)])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


Mounter = Callable[..., Path]


def wait_until(condition: Callable[[], T], timeout: float = 10, interval: float = 0.02) -> T:
    """Call ``condition`` until it returns something true, at most ``timeout`` seconds.

    Returns its last value (false if the time ran out): ``assert wait_until(...)``.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def the_daemon(mnt: Path) -> int:
    """The pid of the daemon serving ``mnt`` (the test fails if there is none)."""
    pid = daemon_pid(mnt)
    assert pid is not None, f"no daemon for {mnt}"
    return pid


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on ``path``, from mountinfo.

    Not ``os.path.ismount``: it stats the mountpoint, which asks the daemon,
    and it says False when that fails (a federation that is down).
    """
    return find_mount(path) is not None


def unmount(mountpoint: Path) -> None:
    """Unmount, lazily if a reader still holds it; never leave a mount behind."""
    for command in (["umount", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            return
        subprocess.run(command, capture_output=True, timeout=30)


def run_helper(
    url: str, mountpoint: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELPER), url, str(mountpoint), "-o", "startup_jitter=0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """``mounter(url, "-o", "opts")`` mounts with ``bin/mount.davfed``; returns the mountpoint."""
    mounted: list[Path] = []

    def mount(url: str, *args: str, mountpoint: Path | None = None) -> Path:
        target = mountpoint or tmp_path / f"mnt{len(mounted)}"
        target.mkdir(exist_ok=True)
        cache = tmp_path / f"cache{len(mounted)}"
        result = run_helper(url, target, "-o", f"cache_dir={cache}", *args)
        mounted.append(target)
        assert result.returncode == 0, f"mount failed ({result.returncode}): {result.stderr}"
        assert is_mounted(target)
        return target

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            unmount(target)
        leftovers = [m for m in mounted if is_mounted(m)]
        assert not leftovers, f"still mounted: {leftovers}"
