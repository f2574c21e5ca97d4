"""Reads through an HTTP proxy list (tinyproxy standing in for squid), with failover."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import Mounter, requires_fuse, run_helper

pytestmark = [
    pytest.mark.mount,
    requires_fuse,
    pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="needs tinyproxy"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tinyproxy on loopback: its URL and its log (one line per request)."""
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Connect\n'
        f"MaxClients 50\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
    )
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(10)


def test_reads_go_through_the_first_working_proxy(
    federation: TestFederation, tree: Path, mounter: Mounter, proxy: tuple[str, Path]
) -> None:
    url, log = proxy
    dead = f"http://127.0.0.1:{free_port()}"
    mnt = mounter(federation.url, "-o", f"proxy={dead};{url}")
    assert (mnt / "file-131072.bin").read_bytes() == (tree / "file-131072.bin").read_bytes()
    requests = log.read_text()
    assert "/myfed/file-131072.bin" in requests, "the federation's 302 went through the proxy"
    assert "/ep" in requests, "so did the data from the endpoint"


def test_no_working_proxy_fails_the_mount(federation: TestFederation, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_helper(federation.url, mnt, "-o", f"proxy={dead}")
    assert result.returncode == 32
    assert "no proxy works" in result.stderr and dead in result.stderr
