"""CVMFS-style extended attributes, health, and the ECS records of real reads."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from davfed_testfed import TestFederation
from tests.mounting import Mounter, requires_fuse, the_daemon
from tests.ops.conftest import davfed, doc_table, status
from tests.testfed_fixtures import write_tree

pytestmark = [pytest.mark.mount, requires_fuse]

ROOT_NAMES = [row[0] for row in doc_table("## Extended attributes")]
#: Names no attribute, status or record may carry (the S3 endpoints sign their URLs).
SECRETS = re.compile(r"X-Amz-Signature=[0-9a-f]|Signature=[A-Za-z0-9%]{8}|sig=[A-Za-z0-9%]{8}")

#: The ECS 8.11 fields a record may carry, with their ECS types (from the ECS field
#: reference), and how a JSON value of each type looks.
ECS_FIELDS = {
    "@timestamp": "date",
    "ecs.version": "keyword",
    "message": "match_only_text",
    "log.level": "keyword",
    "log.logger": "keyword",
    "process.pid": "long",
    "event.kind": "keyword",
    "event.category": "keyword[]",
    "event.type": "keyword[]",
    "event.dataset": "keyword",
    "event.action": "keyword",
    "event.outcome": "keyword",
    "event.duration": "long",
    "trace.id": "keyword",
    "destination.domain": "keyword",
    "destination.port": "long",
    "url.scheme": "keyword",
    "url.path": "wildcard",
    "file.path": "keyword",
    "http.request.method": "keyword",
    "http.response.status_code": "long",
    "http.response.body.bytes": "long",
    "error.message": "match_only_text",
}
#: ECS's allowed values of its categorisation fields.
ECS_ALLOWED = {
    "event.kind": {"alert", "enrichment", "event", "metric", "state", "pipeline_error", "signal"},
    "event.outcome": {"failure", "success", "unknown"},
    "event.category": {"network", "file", "web", "process", "authentication"},
    "event.type": {"access", "connection", "info", "error", "protocol", "start", "end"},
}
#: davfed's own fields (custom, under ``davfed.``), as docs/operations.md lists them.
DAVFED_FIELDS = {"davfed.range": "keyword", "davfed.retries": "long", "davfed.failovers": "long",
                 "davfed.read": "keyword"}  # fmt: skip


def matches(value: Any, ecs_type: str) -> bool:
    if ecs_type.endswith("[]"):
        return isinstance(value, list) and all(matches(v, ecs_type[:-2]) for v in value)
    if ecs_type == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if ecs_type == "date":
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            return False
        return True
    return isinstance(value, str)


@pytest.fixture(scope="module")
def signed_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestFederation]:
    """A federation whose endpoints are one WebDAV and two pre-signed S3 ones."""
    root = tmp_path_factory.mktemp("signedtree")
    write_tree(root)
    with TestFederation(root, endpoints=3, kinds=["s3v4", "s3v2", "dav"]) as fed:
        yield fed


def test_root_and_file_attributes(
    signed_fed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter
) -> None:
    mnt = mounter(signed_fed.url)
    big = mnt / "data" / "big.bin"
    assert big.read_bytes() == testfed_files["data/big.bin"]
    listed = os.listxattr(mnt)
    assert listed == [f"user.davfed.{name}" for name in ROOT_NAMES], "as documented, in order"
    values = {n.removeprefix("user.davfed."): os.getxattr(mnt, n).decode() for n in listed}
    assert values["pid"] == str(the_daemon(mnt))
    assert values["version"] == davfed("--version")[0].stdout.split()[1]
    assert values["url"] == signed_fed.url.rstrip("/") + "/"
    assert values["proxy"] == values["proxy_list"] == "DIRECT"
    assert int(values["rx"]) >= len(testfed_files["data/big.bin"])
    assert int(values["ndownload"]) >= 1 and int(values["speed"]) > 0
    assert values["nioerr"] == "0" and values["credential_expiry"] == ""
    assert 0 <= float(values["hitrate"]) <= 100 and values["health"] == "healthy"
    assert values["host"].startswith("127.0.0.1:")
    got = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.davfed.ndownload", str(mnt)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert got == values["ndownload"]
    assert os.listxattr(big) == ["user.davfed.replica", "user.davfed.cached", "user.davfed.etag"]
    replica = os.getxattr(big, "user.davfed.replica").decode()
    assert replica.startswith("http://127.0.0.1:")
    assert float(os.getxattr(big, "user.davfed.cached")) == 1.0
    assert os.getxattr(mnt / "hello.txt", "user.davfed.cached") == b"0.0000"
    assert os.getxattr(big, "user.davfed.etag")
    assert os.listxattr(mnt / "data") == []
    with pytest.raises(OSError) as caught:
        os.getxattr(big, "user.davfed.nonesuch")
    assert caught.value.errno == 61  # ENODATA
    # No secret anywhere: attributes, listing of every file, status.
    for path in [mnt, *(p for p in (mnt / "data").iterdir())]:
        for name in os.listxattr(path):
            assert not SECRETS.search(os.getxattr(path, name).decode()), (path, name)
    assert not SECRETS.search(json.dumps(status(mnt)))


def test_every_endpoint_failing_is_degraded(
    testfed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter
) -> None:
    mnt = mounter(testfed.url, "-o", "cache_size=0,retries=0,timeout=2")
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert davfed("status", str(mnt))[0].returncode == 0
    for endpoint in testfed.endpoints:  # the file only: the federation's health checks pass
        testfed.fault(endpoint.index, "status", status=503, path="small/one.bin")
    with pytest.raises(OSError):
        (mnt / "small" / "one.bin").read_bytes()
    result, _ = davfed("status", str(mnt))
    assert result.returncode == 3, result
    assert "degraded (every endpoint failed in the last 60 s)" in result.stdout
    doc = status(mnt)
    assert doc["errors"].get("EIO", 0) >= 1 and doc["reads"]["failovers"] >= 1
    failed = [e for e in doc["endpoints"] if e["errors"]]
    assert failed and all(e["statuses"].get("5xx") for e in failed)
    assert all(e["penalised_until"] for e in failed)
    assert "503" in failed[0]["last_error"]
    assert any("replica failed" in w["message"] for w in doc["warnings"])
    assert os.getxattr(mnt, "user.davfed.health") == b"degraded"
    assert int(os.getxattr(mnt, "user.davfed.nioerr")) >= 1


def test_ecs_records_of_a_real_mount(
    signed_fed: TestFederation, testfed_files: dict[str, bytes], mounter: Mounter, tmp_path: Path
) -> None:
    log = tmp_path / "davfed.json"
    mnt = mounter(signed_fed.url, "-o", f"log_format=json,log_file={log},readahead=16M")
    for name in ("data/big.bin", "data/block.bin", "hello.txt"):
        assert (mnt / name).read_bytes() == testfed_files[name]
    for index in range(3):
        signed_fed.fault(index, "status", status=500, path="deep/a/b/c/leaf.txt")
    with pytest.raises(OSError):
        (mnt / "deep" / "a" / "b" / "c" / "leaf.txt").read_bytes()
    signed_fed.clear_faults()
    text = log.read_text()
    assert not SECRETS.search(text)
    records = [json.loads(line) for line in text.splitlines()]
    transfers = [r for r in records if r.get("event.dataset") == "davfed.transfer"]
    assert len(transfers) >= 5
    for record in transfers:
        for key, value in record.items():
            if key in DAVFED_FIELDS:
                assert matches(value, DAVFED_FIELDS[key]), (key, value)
                continue
            assert key in ECS_FIELDS, f"{key} is not an ECS field"
            assert matches(value, ECS_FIELDS[key]), (key, value, ECS_FIELDS[key])
            allowed = ECS_ALLOWED.get(key)
            if allowed is not None:
                assert set(value if isinstance(value, list) else [value]) <= allowed
        assert re.fullmatch(r"[0-9a-f]{32}", record["trace.id"])
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for record in transfers:
        by_trace.setdefault(record["trace.id"], []).append(record)
    # The federation's 302 and the storage GET that followed it share one trace.id.
    fed_host = signed_fed.url.split("/")[2].split(":")[0]
    joined = [
        group
        for group in by_trace.values()
        if [r["event.action"] for r in group][:2] == ["redirect", "read"]
    ]
    assert joined, "no redirect followed by its read under one trace.id"
    redirect, read = joined[0][:2]
    assert (
        redirect["http.response.status_code"] == 302 and redirect["destination.domain"] == fed_host
    )
    assert read["file.path"] == redirect["file.path"] and read["event.outcome"] == "success"
    assert read["http.response.status_code"] in (200, 206) and read["http.response.body.bytes"] > 0
    assert {r["davfed.read"] for r in transfers} == {"direct", "readahead"}
    failed = [
        r
        for r in transfers
        if r["file.path"] == "/deep/a/b/c/leaf.txt" and r["event.action"] == "read"
    ]
    assert failed and all(r["event.outcome"] == "failure" for r in failed)
    assert all(r["http.response.status_code"] == 500 and "error.message" in r for r in failed)
    assert max(r["davfed.failovers"] for r in failed) >= 1
    assert len({r["trace.id"] for r in failed}) < len(failed), "failovers share the trace"
