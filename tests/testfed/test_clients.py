"""An independent Dynafed client, unchanged, against the test federation: davix and curl."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from davfed_testfed import TestFederation
from tests.testfed_fixtures import SPECIAL_NAMES

needs_davix = pytest.mark.skipif(shutil.which("davix-ls") is None, reason="davix not installed")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@needs_davix
def test_davix_ls_lists_directories(testfed: TestFederation, testfed_tree: Path) -> None:
    out = run("davix-ls", "-l", testfed.url).stdout
    rows = {line.split()[-1]: line.split() for line in out.splitlines() if line.strip()}
    assert set(rows) == {quote(p.name) for p in testfed_tree.iterdir()}
    assert rows["hello.txt"][0] == "-rw-r--r--"
    assert rows["hello.txt"][2] == str((testfed_tree / "hello.txt").stat().st_size)
    assert rows["data"][0] == "drwxr-xr-x"
    out = run("davix-ls", "-l", testfed.url + "data/").stdout
    sizes = {line.split()[-1]: int(line.split()[2]) for line in out.splitlines()}
    assert sizes == {p.name: p.stat().st_size for p in (testfed_tree / "data").iterdir()}


@needs_davix
@pytest.mark.parametrize("relpath", ["data/big.bin", "empty.bin", SPECIAL_NAMES[4]])
def test_davix_get_through_the_redirect(
    testfed: TestFederation, tmp_path: Path, testfed_files: dict[str, bytes], relpath: str
) -> None:
    out = tmp_path / "got"
    run("davix-get", testfed.file_url(relpath), str(out))
    assert sha256(out.read_bytes()) == sha256(testfed_files[relpath])
    assert testfed.bytes_sent(0) >= len(testfed_files[relpath])


@needs_davix
def test_davix_http_propfind_and_head(testfed: TestFederation) -> None:
    out = run("davix-http", "-X", "PROPFIND", "-H", "Depth: 0", testfed.file_url("hello.txt"))
    assert "<lp3:mode>0100644</lp3:mode>" in out.stdout
    out = run("davix-http", "-X", "OPTIONS", testfed.url)
    assert out.returncode == 0


@pytest.mark.parametrize("relpath", ["data/big.bin", *SPECIAL_NAMES])
def test_curl_follows_the_redirect(
    testfed: TestFederation, tmp_path: Path, testfed_files: dict[str, bytes], relpath: str
) -> None:
    out = tmp_path / "got"
    result = run(
        "curl", "-sSfL", "-o", str(out), "-w", "%{http_code} %{num_redirects}",
        testfed.file_url(relpath),
    )  # fmt: skip
    assert result.stdout == "200 1"
    assert sha256(out.read_bytes()) == sha256(testfed_files[relpath])


def test_curl_range_through_the_redirect(
    testfed: TestFederation, testfed_files: dict[str, bytes]
) -> None:
    result = subprocess.run(
        ["curl", "-sSfL", "-r", "1000-1999", testfed.file_url("data/big.bin")],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert result.stdout == testfed_files["data/big.bin"][1000:2000]
