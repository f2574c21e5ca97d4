"""A daemon killed with SIGKILL mid-read: the remount works, its cache serves only good blocks."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import MiB, Mounter, requires_fuse, the_daemon, wait_until, write_big

pytestmark = [pytest.mark.mount, requires_fuse]

SIZE = 96 * MiB


def fetched(fed: TestFederation) -> int:
    """Bytes the endpoints sent, once their logs settle (nginx logs a request when it ends)."""
    seen: list[int] = []

    def settled() -> bool:
        seen.append(sum(fed.bytes_sent(e.index) for e in fed.endpoints))
        return len(seen) > 1 and seen[-1] == seen[-2]

    assert wait_until(settled, timeout=10, interval=0.1)
    return seen[-1]


def block_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("v1/*/*/*") if p.name.isdigit())


def test_kill_9_mid_read_then_remount(
    tmp_path: Path, mounter: Mounter, make_testfed: object
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_big(data / "input.root", SIZE, 9)
    expected = hashlib.sha256((data / "input.root").read_bytes()).hexdigest()
    fed = make_testfed(data, endpoints=2)  # type: ignore[operator]
    cache = tmp_path / "cache"
    mnt = mounter(fed.url, "-o", f"cache_dir={cache}")
    with open(mnt / "input.root", "rb") as f:
        f.read(32 * MiB)  # the first 32 MiB are now cached (and more is being read ahead)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"open({str(mnt / 'input.root')!r}, 'rb').read()"],
        stderr=subprocess.PIPE,
    )
    time.sleep(0.05)
    os.kill(the_daemon(mnt), signal.SIGKILL)
    reader.communicate(timeout=30)  # the reader gets an error (or finished first): no hang
    kept = block_files(cache)
    assert len(kept) >= 8, "the cache survived the crash"

    before = fetched(fed)
    mounter(fed.url, "-o", f"cache_dir={cache}", mountpoint=mnt)  # detaches the dead mount
    assert not list(cache.rglob("*.tmp")), "half-written blocks were swept"
    assert hashlib.sha256((mnt / "input.root").read_bytes()).hexdigest() == expected
    refetched = fetched(fed) - before
    assert refetched <= SIZE - 32 * MiB, f"the cached blocks were fetched again ({refetched})"


def test_a_corrupted_block_is_fetched_again_not_served(
    tmp_path: Path, mounter: Mounter, make_testfed: object
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_big(data / "input.root", 16 * MiB, 11)
    expected = (data / "input.root").read_bytes()
    fed = make_testfed(data, endpoints=1)  # type: ignore[operator]
    cache = tmp_path / "cache"
    mnt = mounter(fed.url, "-o", f"cache_dir={cache}")
    assert (mnt / "input.root").read_bytes() == expected
    deadline = time.monotonic() + 10  # blocks read directly are stored in the background
    while len(block_files(cache)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["umount", str(mnt)], check=True)
    blocks = block_files(cache)
    assert len(blocks) == 4
    victim = bytearray(blocks[1].read_bytes())
    victim[12345] ^= 0xFF  # a flipped bit, same size: only the checksum can tell
    blocks[1].write_bytes(bytes(victim))
    blocks[2].write_bytes(blocks[2].read_bytes()[:1000])  # a truncated block
    mounter(fed.url, "-o", f"cache_dir={cache}", mountpoint=mnt)
    assert (mnt / "input.root").read_bytes() == expected
