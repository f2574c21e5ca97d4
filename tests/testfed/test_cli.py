"""``davfed testfed`` as a command: ready output, clean shutdown, bad input, startup time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from davfed_testfed import TestFederation, TestFedError

DAVFED = [sys.executable, "-m", "davfed_fuse"]


def children(pid: int) -> set[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def proc_cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def fail(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [*DAVFED, "testfed", *args], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_run_and_clean_stop(
    testfed_tree: Path, tmp_path: Path, proc_cleanup: list[subprocess.Popen[str]], sig: int
) -> None:
    control_file = tmp_path / "fed.json"
    proc = subprocess.Popen(
        [*DAVFED, "testfed", str(testfed_tree), "--port", "0", "--endpoints", "2",
         "--second-hop", "1", "--control-file", str(control_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc_cleanup.append(proc)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    info = json.loads(control_file.read_text())
    assert url == info["url"] and url.startswith("http://127.0.0.1:") and url.endswith("/myfed/")
    assert httpx.get(url + "hello.txt").status_code == 302
    nginx = children(proc.pid)
    assert len(nginx) >= 4  # two masters, two workers
    work_dir = Path(info["work_dir"])
    assert work_dir.is_dir()
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    assert not any(alive(pid) for pid in nginx)
    assert not work_dir.exists()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_missing_data_dir(tmp_path: Path) -> None:
    assert "does not exist" in fail(str(tmp_path / "nope"), "--port", "0")
    (tmp_path / "file").write_text("x")
    assert "not a directory" in fail(str(tmp_path / "file"), "--port", "0")


def test_port_in_use(testfed_tree: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert f"port {port} is already in use" in fail(str(testfed_tree), "--port", str(port))


def test_nginx_missing(testfed_tree: Path) -> None:
    env = {**os.environ, "DAVFED_NGINX": "/nonexistent/nginx"}
    assert "nginx not found" in fail(str(testfed_tree), "--port", "0", env=env)


def test_bad_arguments(testfed_tree: Path) -> None:
    assert "--port" in fail(str(testfed_tree))
    assert "unknown endpoint kind" in fail(str(testfed_tree), "--port", "0", "--kinds", "ftp")
    assert "3 endpoints" in fail(str(testfed_tree), "--port", "0", "--kinds", "dav,s3v4")
    assert "dav endpoints only" in fail(
        str(testfed_tree), "--port", "0", "--kinds", "s3v4", "--second-hop", "0"
    )


def test_handle_reports_startup_failure(tmp_path: Path) -> None:
    with pytest.raises(TestFedError, match="does not exist"):
        TestFederation(tmp_path / "nope").start()


def test_starts_in_under_two_seconds(testfed_tree: Path) -> None:
    started = time.monotonic()
    with TestFederation(testfed_tree, endpoints=3, kinds=["dav", "s3v4", "azure"]) as fed:
        elapsed = time.monotonic() - started
        assert httpx.get(fed.url + "hello.txt").status_code == 302
    print(f"testfed startup: {elapsed:.3f} s (handle: {fed.startup_seconds:.3f} s)")
    assert elapsed < 2.0
