"""The control socket, ``davfed status`` and ``davfed ctl`` on real mounts of the test fed."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from davfed_testfed import TestFederation
from tests.mount.test_proxy import free_port, proxy  # noqa: F401 (a fixture)
from tests.mounting import Mounter, requires_fuse, the_daemon
from tests.ops.conftest import davfed, doc_table, status

pytestmark = [pytest.mark.mount, requires_fuse]

TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int,
    "number": (int, float),
    "string": str,
    "object": dict,
    "array": list,
    "null": type(None),
}


def check_schema(doc: dict[str, Any]) -> None:
    """``doc`` has every field docs/operations.md lists, of its type, and no other."""
    documented = {row[0]: row[1] for row in doc_table("### The JSON document")}
    seen: set[str] = set()

    def walk(value: Any, path: str) -> None:
        kinds = documented.get(path)
        assert kinds is not None, f"{path} is not documented in docs/operations.md"
        seen.add(path)
        allowed = tuple(t for k in kinds.split("|") for t in _as_tuple(TYPES[k]))
        assert isinstance(value, allowed) and not isinstance(value, bool), (path, value)
        if isinstance(value, dict):
            children = [f"{path}.{key}" for key in value]
            if any(child in documented for child in children):  # a record, not a map
                for key, item in value.items():
                    walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    for key, field in item.items():
                        walk(field, f"{path}[].{key}")

    for key, value in doc.items():
        walk(value, key)
    top = {p for p in documented if "." not in p and "[" not in p}
    assert top <= seen, f"documented but missing: {top - seen}"


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def test_status_document_follows_the_documented_schema(
    testfed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter
) -> None:
    mnt = mounter(testfed.url)
    assert (mnt / "data" / "big.bin").read_bytes() == testfed_files["data/big.bin"]
    doc = status(mnt)
    check_schema(doc)
    assert doc["health"] == "healthy" and doc["pid"] == the_daemon(mnt)
    assert doc["reads"]["kernel_bytes"] >= len(testfed_files["data/big.bin"])
    assert doc["reads"]["redirects"] >= 1 and doc["reads"]["downloads"] >= 1
    endpoints = {e["host"]: e for e in doc["endpoints"]}
    fed = testfed.url.split("/")[2]
    assert endpoints[fed]["statuses"].get("3xx", 0) >= 1, "the federation's 302 counted"
    storage = [e for h, e in endpoints.items() if h != fed]
    assert sum(e["bytes"] for e in storage) >= len(testfed_files["data/big.bin"])
    assert doc["current_endpoint"] in endpoints
    assert doc["cache"]["misses"] >= 1 and doc["credential"]["kind"] is None
    text, _ = davfed("status", str(mnt))
    assert text.returncode == 0 and f"{mnt}: healthy" in text.stdout
    assert testfed.url.split("//")[1].split("/")[0] in text.stdout


def test_socket_is_only_for_root_and_the_mounting_user(
    testfed: TestFederation, mounter: Mounter
) -> None:
    mnt = mounter(testfed.url)
    path = Path(os.getxattr(mnt, "user.davfed.control").decode())
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid() == 0
    escaped = subprocess.run(
        ["systemd-escape", "--path", str(mnt)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert path == Path("/run/davfed") / f"{escaped}.sock", "named as systemd would"
    result, took = davfed("status", str(mnt), user="nobody")
    assert result.returncode == 2 and took < 2.5
    assert result.stderr.count("\n") == 1 and "permission denied" in result.stderr
    # Even with the file opened up, the daemon refuses the peer's uid (SO_PEERCRED).
    os.chmod(path, 0o666)
    try:
        result, _ = davfed("ctl", str(mnt), "log-level", "debug", user="nobody")
    finally:
        os.chmod(path, 0o600)
    assert result.returncode == 2
    assert "uid 65534 may not control this mount" in result.stderr, result.stderr
    assert logging_level(mnt) == "INFO", "nothing changed"


def logging_level(mnt: Path) -> str:
    result, _ = davfed("ctl", str(mnt), "log-level", "info")
    assert result.returncode == 0, result.stderr
    return result.stdout.split("previous: ")[1].split()[0]


def test_ctl_commands_and_bad_ones(
    testfed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter
) -> None:
    mnt = mounter(testfed.url, "-o", "cache_size=0")
    target = mnt / "data" / "block.bin"
    assert target.read_bytes() == testfed_files["data/block.bin"]
    replica = os.getxattr(target, "user.davfed.replica").decode()
    assert replica.startswith("http://") and "/ep" in replica
    result, _ = davfed("ctl", str(mnt), "forget", str(target))
    assert result.returncode == 0 and "path: /data/block.bin" in result.stdout
    assert os.getxattr(target, "user.davfed.replica") == b""
    before = status(mnt)["reads"]["redirects"]
    Path("/proc/sys/vm/drop_caches").write_text("1\n")  # not from the kernel's page cache
    assert target.read_bytes() == testfed_files["data/block.bin"]
    assert status(mnt)["reads"]["redirects"] == before + 1, "the federation was asked again"

    result, _ = davfed("ctl", str(mnt), "log-level", "DEBUG")
    assert result.returncode == 0 and "level: DEBUG" in result.stdout
    assert logging_level(mnt) == "DEBUG"
    for bad, message in [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["log-level", "loud"], "log-level 'loud'"),
        (["log-level"], "usage: log-level LEVEL"),
        (["proxy", "set", "ftp://x:1"], "proxy set"),
        (["forget", "../etc/passwd"], "expected a file's path"),
    ]:
        result, took = davfed("ctl", str(mnt), *bad)
        assert result.returncode == 1, (bad, result)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert took < 2.5
    assert logging_level(mnt) == "INFO"
    info = json.loads(davfed("ctl", str(mnt), "proxy", "info", "--json")[0].stdout)
    assert info["in_use"] == "DIRECT" and info["list"] == "DIRECT"
    assert target.read_bytes() == testfed_files["data/block.bin"], "the mount is undisturbed"


def test_proxy_set_switches_to_a_working_proxy_or_changes_nothing(
    testfed: TestFederation,
    testfed_files: dict[str, bytes],
    mounter: Mounter,
    proxy: tuple[str, Path],  # noqa: F811
) -> None:
    url, log = proxy
    mnt = mounter(testfed.url, "-o", "cache_size=0")
    dead = f"http://127.0.0.1:{free_port()}"
    result, _ = davfed("ctl", str(mnt), "proxy", "set", dead)
    assert result.returncode == 1 and "kept DIRECT" in result.stderr
    assert os.getxattr(mnt, "user.davfed.proxy") == b"DIRECT"
    result, _ = davfed("ctl", str(mnt), "proxy", "set", f"{dead};{url}")
    assert result.returncode == 0, result.stderr
    assert os.getxattr(mnt, "user.davfed.proxy").decode() == url
    assert os.getxattr(mnt, "user.davfed.proxy_list").decode() == f"{dead};{url}"
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert "/ep" in log.read_text(), "the data came through the new proxy"


def test_bad_mountpoints_and_dead_daemons(
    testfed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for args, message in [
        (["status", str(plain)], "not a mountpoint"),
        (["status", "/proc"], "not a davfed mount (it is proc)"),
        (["ctl", str(plain), "proxy", "info"], "not a mountpoint"),
    ]:
        result, took = davfed(*args)
        assert result.returncode == 2 and message in result.stderr, result
        assert result.stderr.count("\n") == 1 and took < 2.5
    result, _ = davfed("status")
    assert result.returncode == 1 and result.stderr.count("\n") == 1

    mnt = mounter(testfed.url)
    path = Path(os.getxattr(mnt, "user.davfed.control").decode())
    # Malformed requests on the socket itself: an error line, the daemon carries on.
    for line in [b"not json\n", b'{"command": "status"}\n', b"[1, 2]\n"]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(line)
            answer = json.loads(sock.makefile().readline())
        assert answer["ok"] is False and "malformed request" in answer["error"]
    pid = the_daemon(mnt)
    os.kill(pid, signal.SIGSTOP)
    try:
        for args in (["status", str(mnt)], ["ctl", str(mnt), "proxy", "info"]):
            result, took = davfed(*args)
            assert result.returncode == 2 and took < 2.5, (result, took)
            assert "does not answer" in result.stderr and result.stderr.count("\n") == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert status(mnt)["health"] == "healthy"


def test_socket_nobody_answers(tmp_path: Path) -> None:
    """A socket file left by a daemon that is gone, or one that never answers: exit 2 in 2 s."""
    from davfed_fuse.system.control import ControlError, request

    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "silent.sock"))
    listening.listen(1)
    with listening:
        started = time.monotonic()
        with pytest.raises(ControlError, match="does not answer") as caught:
            request(tmp_path / "silent.sock", ["status"])
        assert caught.value.code == 2 and time.monotonic() - started < 2.5
    with pytest.raises(ControlError, match=r"nobody listens|no control socket") as caught:
        request(tmp_path / "silent.sock", ["status"])
    assert caught.value.code == 2


def test_summary_line_every_stats_interval(
    testfed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter, tmp_path: Path
) -> None:
    log = tmp_path / "davfed.log"
    mnt = mounter(testfed.url, "-o", f"stats_interval=0.5,log_file={log}")
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if " stats: " in line]
        if lines and "endpoints: 127.0.0.1:" in lines[-1] and "read 18 B" in lines[-1]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no summary line with the read in {log.read_text()[-2000:]}")
    assert "hit rate" in lines[-1] and "HTTP errors" in lines[-1]
