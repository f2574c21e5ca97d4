"""Configuration files on real mounts: a conf.d key reaches the daemon, -o beats it, a bad
file fails the mount with FILE:LINE, and the capacity warning at mount."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.configfile import CONFIG_DIR_ENV
from davfed_testfed import TestFederation
from tests.mounting import HELPER, is_mounted, requires_fuse, unmount

pytestmark = [pytest.mark.mount, requires_fuse]


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    root = tmp_path / "etc-davfed"
    (root / "conf.d").mkdir(parents=True)
    return root


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    unmount(path)
    assert not is_mounted(path)


def helper(url: str, mountpoint: Path, etc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELPER), url, str(mountpoint), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, CONFIG_DIR_ENV: str(etc)},
        check=False,
    )


def blocks_under(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.is_file() and p.parent.parent.name != "v1"]


def test_conf_d_settings_reach_the_daemon_and_o_beats_them(
    testfed: TestFederation, testfed_files: dict[str, bytes], etc: Path, mnt: Path, tmp_path: Path
) -> None:
    from_file, from_o = tmp_path / "cache-from-file", tmp_path / "cache-from-o"
    log = tmp_path / "davfed.log"
    (etc / "davfed.conf").write_text("cache_dir = /nonexistent/overridden-below\n")
    (etc / "conf.d" / "50-site.conf").write_text(
        f"cache_dir = {from_file}\nlog_file = {log}\nlog_level = debug\n"
    )
    result = helper(testfed.url, mnt, etc)
    assert result.returncode == 0, result.stderr
    assert (mnt / "data" / "block.bin").read_bytes() == testfed_files["data/block.bin"]
    assert blocks_under(from_file), "the daemon did not cache where conf.d said"
    assert " DEBUG " in log.read_text()  # log_level=debug and log_file= took effect
    unmount(mnt)

    result = helper(testfed.url, mnt, etc, "-o", f"cache_dir={from_o}")
    assert result.returncode == 0, result.stderr
    assert (mnt / "data" / "big.bin").read_bytes() == testfed_files["data/big.bin"]
    assert blocks_under(from_o), "-o cache_dir= did not win over conf.d"


def test_a_section_for_the_mountpoint_applies(
    testfed: TestFederation, testfed_files: dict[str, bytes], etc: Path, mnt: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache-of-this-mount"
    (etc / "davfed.conf").write_text(
        f"cache_dir = {tmp_path / 'global'}\n[/elsewhere]\ncache_dir = /nope\n"
        f"[{mnt}]\ncache_dir = {cache}\n"
    )
    result = helper(testfed.url, mnt, etc)
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert blocks_under(cache) and not (tmp_path / "global").exists()


def test_a_config_file_given_with_o(
    testfed: TestFederation, testfed_files: dict[str, bytes], etc: Path, mnt: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache-of-config-file"
    conf = tmp_path / "belle.conf"
    conf.write_text(f"cache_dir = {cache}\n")
    missing = helper(testfed.url, mnt, etc, "-o", f"config={tmp_path / 'missing.conf'}")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip() == f"davfed: config file {tmp_path / 'missing.conf'} does not exist"
    )
    result = helper(testfed.url, mnt, etc, "-o", f"config={conf}")
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert blocks_under(cache)


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        (
            "cache_size = 20G\ncache_sise = 20G\n",
            2,
            "unknown option 'cache_sise' (see docs/options.md)",
        ),
        ("timeout = soon\n", 1, "bad value for 'timeout': 'soon' expected a number of seconds"),
    ],
)
def test_a_bad_file_fails_the_mount_in_one_line(
    testfed: TestFederation, etc: Path, mnt: Path, text: str, line: int, why: str
) -> None:
    conf = etc / "conf.d" / "10-bad.conf"
    conf.write_text(text)
    result = helper(testfed.url, mnt, etc)
    assert result.returncode == 1
    assert result.stderr.strip() == f"davfed: {conf}:{line}: {why}"
    assert not is_mounted(mnt)


def test_a_cache_size_the_disk_cannot_give_is_one_warning_at_mount(
    testfed: TestFederation, etc: Path, mnt: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        log = tmp_path / "davfed.log"
        (etc / "davfed.conf").write_text(
            f"cache_dir = {small}\ncache_size = 1G\nlog_file = {log}\n"
        )
        result = helper(testfed.url, mnt, etc)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in log.read_text().splitlines() if "cache_size=1G" in line]
        assert len(warnings) == 1, log.read_text()
        assert "is more than the cache can get on" in warnings[0]
        unmount(mnt)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
