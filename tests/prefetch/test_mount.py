"""``davfed prefetch`` and ``davfed cache`` against real mounts of a small test federation."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from davfed_testfed import TestFederation
from tests.mounting import HELPER, REPO, is_mounted, requires_fuse, unmount

pytestmark = [pytest.mark.mount, requires_fuse]

MiB = 1 << 20
BIG = 20 * MiB
#: Bytes the endpoints may send for reads after a prefetch (metadata, a re-fetched edge).
SLACK = 1 * MiB


def pattern(size: int, seed: int) -> bytes:
    """Deterministic bytes in which every MiB differs."""
    base = hashlib.sha256(seed.to_bytes(8, "little")).digest() * (MiB // 32)
    out = b"".join(i.to_bytes(8, "little") + base[8:] for i in range(size // MiB + 1))
    return out[:size]


def mount(url: str, mountpoint: Path, cache: Path) -> None:
    """``bin/mount.davfed``, which returns once the mount is live."""
    result = subprocess.run(
        [str(HELPER), url, str(mountpoint), "-o", f"cache_dir={cache}"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"mount failed ({result.returncode}): {result.stderr}"
    assert is_mounted(mountpoint)


@dataclass
class Mounted:
    fed: TestFederation
    data: Path
    mnt: Path
    cache: Path

    def sent(self) -> int:
        return sum(self.fed.bytes_sent(e.index) for e in self.fed.endpoints)


def davfed(*argv: str | Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "davfed_fuse", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def make_tree(data: Path) -> None:
    (data / "job" / "more").mkdir(parents=True)
    for i in range(3):
        (data / "job" / f"input-{i}.root").write_bytes(pattern(BIG, 10 + i))
    (data / "job" / "more" / "small.txt").write_bytes(b"small\n")
    (data / "job" / "more" / "empty").write_bytes(b"")
    (data / "other.bin").write_bytes(pattern(MiB + 5, 99))


@pytest.fixture
def mounted(tmp_path: Path, make_testfed: Callable[..., TestFederation]) -> Iterator[Mounted]:
    data, mnt, cache = tmp_path / "data", tmp_path / "mnt", tmp_path / "cache"
    make_tree(data)
    mnt.mkdir()
    fed = make_testfed(data, endpoints=2)
    try:
        mount(fed.url, mnt, cache)
        yield Mounted(fed, data, mnt, cache)
    finally:
        unmount(mnt)
    assert not is_mounted(mnt)


def inputs(m: Mounted) -> list[Path]:
    return [m.mnt / "job" / f"input-{i}.root" for i in range(3)]


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (``fincore``), None if fincore is missing."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def test_prefetch_warms_the_cache_so_reads_fetch_nothing_more(mounted: Mounted) -> None:
    before = mounted.sent()
    done = davfed("prefetch", *inputs(mounted), "--jobs", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "davfed prefetch: 3 files, 62.9 MB"
    assert re.fullmatch(
        r"davfed prefetch: 3 files, 62\.9 MB \(62914560 bytes\) in [\d.]+ s, "
        r"[\d.]+ MB/s; 0 failed",
        lines[-1],
    ), lines[-1]
    cold = mounted.sent() - before
    assert cold >= 3 * BIG  # it really went to the endpoints
    for path in inputs(mounted):  # the warmed data is in davfed's cache, not in RAM
        assert resident_bytes(path) in (0, None)

    before = mounted.sent()
    for i, path in enumerate(inputs(mounted)):
        assert path.read_bytes() == pattern(BIG, 10 + i)
    assert mounted.sent() - before <= SLACK


def test_recursive_json_and_cache_stats_while_mounted(mounted: Mounted) -> None:
    done = davfed("prefetch", "-r", mounted.mnt / "job", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0] == {"event": "start", "files": 5, "bytes": 3 * BIG + 6}
    files = {r["path"]: r for r in records if r["event"] == "file"}
    expected = [
        *inputs(mounted),
        mounted.mnt / "job/more/small.txt",
        mounted.mnt / "job/more/empty",
    ]
    assert sorted(files) == sorted(map(str, expected))
    assert all(r["ok"] for r in files.values())
    assert not any(r["event"] == "progress" for r in records)  # --quiet
    summary = records[-1]
    assert summary["event"] == "summary"
    assert (summary["files"], summary["failed"], summary["bytes"]) == (5, 0, 3 * BIG + 6)
    assert summary["exit_status"] == 0

    # The daemon hands a fetched block to the reader before it has written it to disk:
    # the last blocks may still be on their way when prefetch returns.
    deadline = time.monotonic() + 10
    while True:
        stats = davfed("cache", "stats", "--cache-dir", mounted.cache, "--json")
        assert stats.returncode == 0, stats.stderr
        (cache,) = json.loads(stats.stdout)["caches"]
        if cache["blocks"] == 16 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert cache["in_use"] is True and cache["locked_by"] > 0
    assert (cache["blocks"], cache["bytes"], cache["files"]) == (16, 3 * BIG + 6, 4)
    text = davfed("cache", "stats", "--cache-dir", mounted.cache)
    assert text.returncode == 0
    assert "in use by a running davfed" in text.stdout and "may lag" in text.stdout


def test_clean_refuses_while_mounted_and_works_after(mounted: Mounted) -> None:
    assert davfed("prefetch", mounted.mnt / "other.bin", "-q").returncode == 0
    refused = davfed("cache", "clean", "--cache-dir", mounted.cache)
    assert refused.returncode == 32
    assert "in use by a running davfed" in refused.stderr
    assert "unmount it first" in refused.stderr
    assert "Traceback" not in refused.stderr
    unmount(mounted.mnt)
    stats = json.loads(davfed("cache", "stats", "--cache-dir", mounted.cache, "--json").stdout)
    assert stats["caches"][0]["blocks"] == 1 and stats["caches"][0]["in_use"] is False
    cleaned = davfed("cache", "clean", "--cache-dir", mounted.cache)
    assert cleaned.returncode == 0, cleaned.stderr
    assert re.search(r": freed 1 blocks, 1\.0 MB \(1048581 bytes\)", cleaned.stdout)
    stats = json.loads(davfed("cache", "stats", "--cache-dir", mounted.cache, "--json").stdout)
    assert stats["caches"][0]["blocks"] == 0 and stats["caches"][0]["bytes"] == 0
    assert stats["total"]["blocks"] == 0


def test_paths_outside_a_davfed_mount_are_refused(mounted: Mounted, tmp_path: Path) -> None:
    for argv in (
        ["prefetch", mounted.data / "other.bin"],
        ["prefetch", mounted.mnt / "other.bin", "-r", tmp_path],
    ):
        done = davfed(*argv)
        assert done.returncode == 1
        assert done.stderr.startswith("davfed: prefetch: ")
        assert "is not inside a davfed mount" in done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert mounted.sent() == 0  # the davfed path given with it was not read either
    directory = davfed("prefetch", mounted.mnt / "job")
    assert directory.returncode == 1 and "use -r" in directory.stderr
    assert davfed("prefetch").returncode == 1
    assert davfed("prefetch", mounted.mnt / "other.bin", "--jobs", "0").returncode == 1


def test_failures_are_reported_with_their_errno(mounted: Mounted) -> None:
    missing = mounted.mnt / "job" / "no-such-file.root"
    done = davfed("prefetch", missing, mounted.mnt / "other.bin")
    assert done.returncode == 2
    assert f"davfed prefetch: {missing}: ENOENT (No such file or directory)" in done.stderr
    assert re.search(r"1 file, .* 1 failed \(ENOENT 1\)$", done.stderr.strip())

    # A file whose every replica answers 500: EIO from the mount.
    rel = "job/input-1.root"
    for endpoint in mounted.fed.endpoints:
        mounted.fed.fault(endpoint.index, "status", status=500, path="/" + rel)
    done = davfed("prefetch", mounted.mnt / rel, "--json")
    assert done.returncode == 2
    records = [json.loads(line) for line in done.stdout.splitlines()]
    (failed,) = [r for r in records if r["event"] == "file"]
    assert failed["ok"] is False
    assert failed["errno"] == errno.errorcode[errno.EIO]
    assert records[-1]["failures"][0]["errno"] == "EIO"


def test_plain_progress_lines_without_a_terminal(mounted: Mounted) -> None:
    for endpoint in mounted.fed.endpoints:  # about 2 s in all
        mounted.fed.fault(endpoint.index, "slow", delay=0.3)
    done = davfed("prefetch", *inputs(mounted), "--interval", "0.2", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    progress = [
        line
        for line in lines
        if re.fullmatch(
            r"davfed prefetch: [\d.]+ [kMG]?B of 62\.9 MB \(\d+%\), [0-3]/3 files, "
            r"[\d.]+ [kMG]?B/s, ETA (\d+:\d\d|-:--)",
            line,
        )
    ]
    assert len(progress) >= 2, lines
    assert "\x1b" not in done.stderr
    assert lines[-1].endswith("0 failed")


def run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``davfed argv`` with stderr on a pseudo-terminal; return its status and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "davfed_fuse", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if k != "NO_COLOR"},
            "COLUMNS": "120",
            "TERM": "xterm-256color",
            **env,
        },
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return status, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_progress_bar_on_a_terminal(mounted: Mounted, no_color: bool) -> None:
    env = {"NO_COLOR": "1"} if no_color else {}
    argv = ["prefetch", *map(str, inputs(mounted)), str(mounted.mnt / "nope")]
    status, out = run_on_a_terminal(argv, env)
    assert status == 2, out
    assert "3/3 files" in out  # rich's bar: files done/total, bytes, speed
    assert "62.9/62.9 MB" in out
    assert "MB/s" in out
    assert "ENOENT (No such file or directory)" in out
    assert "3 files, 62.9 MB (62914560 bytes)" in out and "1 failed (ENOENT 1)" in out
    colour = re.search(r"\x1b\[[0-9;]*(3[0-9]|38;[25];[0-9;]+)m", out)
    assert (colour is None) == no_color, repr(out[:400])
