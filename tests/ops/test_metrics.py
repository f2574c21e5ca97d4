"""Prometheus metrics of a real mount, scraped by a real Prometheus (Debian's package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from davfed_testfed import TestFederation
from tests.mount.test_proxy import free_port
from tests.mounting import Mounter, requires_fuse, run_helper
from tests.ops.conftest import doc_table

pytestmark = [
    pytest.mark.mount,
    requires_fuse,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (Debian)"),
]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=5) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := self.query(expr):
                return result
            time.sleep(0.5)
        pytest.fail(f"Prometheus never had {expr}")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, int]]:
    """A Prometheus on loopback scraping 127.0.0.1:<target port> every second."""
    target, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: davfed\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{server.url}/-/ready", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "Prometheus did not start"
                time.sleep(0.2)
        yield server, target
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_prometheus_scrapes_a_mount(
    testfed: TestFederation,
    testfed_files: dict[str, bytes],
    mounter: Mounter,
    prometheus: tuple[Prometheus, int],
) -> None:
    server, target = prometheus
    mnt = mounter(testfed.url, "-o", f"metrics_addr=127.0.0.1:{target}")
    big = testfed_files["data/big.bin"]
    assert (mnt / "data" / "big.bin").read_bytes() == big
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    assert (mnt / "data" / "big.bin").read_bytes() == big  # warm: from the disk cache
    testfed.fault(0, "status", status=503, path="data/block.bin")
    testfed.fault(1, "status", status=503, path="data/block.bin")
    assert (mnt / "data" / "block.bin").read_bytes() == testfed_files["data/block.bin"]
    with pytest.raises(FileNotFoundError):
        (mnt / "nonesuch").read_bytes()
    expected_bytes = 2 * len(big) + len(testfed_files["data/block.bin"])
    server.wait_for(f"davfed_kernel_read_bytes_total >= {expected_bytes}")
    assert server.value('up{job="davfed"}') == 1
    fetched = server.query("davfed_endpoint_fetched_bytes_total")
    storage = [r for r in fetched if r["metric"]["host"] != testfed.url.split("/")[2]]
    assert sum(float(r["value"][1]) for r in storage) >= len(big)
    assert server.value('sum(davfed_endpoint_requests_total{status_class="3xx"})') >= 2
    assert server.value('sum(davfed_endpoint_requests_total{status_class="5xx"})') >= 1
    assert server.value("sum(davfed_endpoint_errors_total)") >= 1
    assert server.value("davfed_failovers_total") >= 1
    assert server.value("davfed_federation_redirects_total") >= 2
    assert server.value("davfed_metalinks_total") >= 1
    assert server.value("davfed_cache_hits_total") >= 1
    assert server.value("davfed_cache_misses_total") >= 1
    assert server.value("davfed_cache_bytes") >= len(big)
    assert server.value("davfed_cache_max_bytes") > 0
    assert server.value('davfed_read_latency_seconds_count{kind="cold"}') >= 1
    assert server.value('davfed_read_latency_seconds_count{kind="warm"}') >= 1
    assert server.value('davfed_read_latency_seconds_bucket{kind="warm",le="+Inf"}') >= 1
    assert server.value('davfed_fuse_errors_total{errno="ENOENT"}') >= 1
    assert server.value("davfed_open_files") == 0
    assert server.value("davfed_healthy") == 1
    info = server.query("davfed_info")
    assert info[0]["metric"]["url"] == testfed.url.rstrip("/") + "/"
    with open(mnt / "hello.txt", "rb"):
        server.wait_for("davfed_open_files == 1")
    # Every documented metric name is there (the credential's only with a credential).
    names = {r["metric"]["__name__"] for r in server.query('{job="davfed"}')}
    documented = set()
    for row in doc_table("## Prometheus metrics"):
        for cell in row[0].split(","):
            documented.add(cell.strip().strip("`"))
    documented.discard("davfed_credential_seconds_left")
    histogram = "davfed_read_latency_seconds"
    documented = {n for n in documented if n != histogram} | {f"{histogram}_bucket"}
    assert documented <= names, documented - names


def test_metrics_address_in_use_fails_the_mount(testfed: TestFederation, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        result = run_helper(
            testfed.url, mnt, "-o", f"cache_dir={tmp_path / 'c'},metrics_addr=127.0.0.1:{port}"
        )
    assert result.returncode == 32
    assert f"metrics_addr=127.0.0.1:{port}: cannot listen" in result.stderr
    bad = run_helper(testfed.url, mnt, "-o", "metrics_addr=example.org:80")
    assert bad.returncode == 1 and "not an IP address" in bad.stderr
