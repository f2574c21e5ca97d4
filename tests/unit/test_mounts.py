"""Parsing /proc/self/mountinfo, and finding mounts in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from davfed_fuse.system.mounttable import (
    MountEntry,
    containing_mount,
    daemon_pid,
    find_mount,
    is_stale,
    mounts_at,
    parse_mountinfo,
    parse_mountinfo_line,
    read_mountinfo,
    unescape,
)

SAMPLE = "".join(
    line + "\n"
    for line in [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro",
        "36 22 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        "40 22 0:35 / /dynafed/belle ro,nosuid,nodev,relatime shared:20 - fuse.davfed"
        " https://dynafed.example/belle rw,user_id=0,group_id=0,allow_other",
        "41 22 0:36 / /mnt/with\\040space\\011tab rw,nosuid,nodev - fuse.davfed"
        " https://h.example/a\\040b rw,user_id=0,group_id=0",
        "42 22 0:37 / /tmp ro - tmpfs tmpfs rw",
        "43 42 0:38 / /tmp rw - fuse.davfed http://second.example/ rw,user_id=0",
        "44 22 0:39 / /no/optional/fields rw - fuse.sshfs user@host:/p\\134x rw",
    ]
)


def test_parse_a_plain_line() -> None:
    entry = parse_mountinfo_line(SAMPLE.splitlines()[1])
    assert entry == MountEntry(
        mount_id=36,
        parent_id=22,
        device="98:0",
        root="/mnt1",
        mountpoint="/mnt2",
        options="rw,noatime",
        fstype="ext3",
        source="/dev/root",
        super_options="rw,errors=continue",
    )
    assert not entry.is_davfed


def test_parse_a_davfed_line() -> None:
    entry = parse_mountinfo_line(SAMPLE.splitlines()[2])
    assert entry.is_davfed
    assert entry.source == "https://dynafed.example/belle"
    assert entry.mountpoint == "/dynafed/belle"
    assert entry.options == "ro,nosuid,nodev,relatime"


def test_octal_escapes_are_decoded() -> None:
    entry = parse_mountinfo_line(SAMPLE.splitlines()[3])
    assert entry.mountpoint == "/mnt/with space\ttab"
    assert entry.source == "https://h.example/a b"
    assert unescape("a\\134b\\012c") == "a\\b\nc"


def test_no_optional_fields() -> None:
    entry = parse_mountinfo_line(SAMPLE.splitlines()[6])
    assert (entry.fstype, entry.source) == ("fuse.sshfs", "user@host:/p\\x")


@pytest.mark.parametrize("line", ["", "garbage", "1 2 3 4 5 6 7 8", "1 2 0:1 / /x rw - ext4"])
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(ValueError):
        parse_mountinfo_line(line)


def test_find_mount_returns_the_topmost() -> None:
    entries = parse_mountinfo(SAMPLE.splitlines(keepends=True))
    assert len(entries) == 7
    top = find_mount("/tmp", entries)
    assert top is not None and top.mount_id == 43 and top.is_davfed
    found = find_mount("/dynafed/belle", entries)
    assert found is not None and found.mount_id == 40
    assert find_mount("/dynafed", entries) is None


def test_find_mount_resolves_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    line = f"50 22 0:40 / {real} rw - fuse.davfed https://x.example/ rw"
    entries = parse_mountinfo([line])
    assert find_mount(tmp_path / "link", entries) == entries[0]


def test_mounts_at_lists_stacked_mounts_bottom_first() -> None:
    entries = parse_mountinfo(SAMPLE.splitlines(keepends=True))
    assert [e.mount_id for e in mounts_at("/tmp", entries)] == [42, 43]
    assert mounts_at("/dynafed", entries) == []


def test_without_resolving_the_path_is_taken_as_given(tmp_path: Path) -> None:
    """What a daemon needs for its own mountpoint: resolving it would stat it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    entries = parse_mountinfo([f"50 22 0:40 / {real} rw - fuse.davfed https://x.example/ rw"])
    assert find_mount(tmp_path / "link", entries, resolve=False) is None
    assert find_mount(real, entries, resolve=False) == entries[0]


def test_containing_mount_is_the_deepest_ancestor() -> None:
    entries = parse_mountinfo(SAMPLE.splitlines(keepends=True))
    inner = containing_mount("/dynafed/belle/run/a.root", entries)
    assert inner is not None and inner.mount_id == 40
    assert containing_mount("/dynafed/belle", entries) == inner
    outer = containing_mount("/dynafed/belle2/x", entries)  # a prefix is not an ancestor
    assert outer is not None and outer.mountpoint == "/"
    top = containing_mount("/tmp/x", entries)
    assert top is not None and top.mount_id == 43  # stacked: the topmost


def test_read_the_real_mount_table() -> None:
    entries = read_mountinfo()
    root = find_mount("/", entries)
    assert root is not None and root.mountpoint == "/"


def test_is_stale_is_false_for_ordinary_paths(tmp_path: Path) -> None:
    assert not is_stale(tmp_path)
    assert not is_stale(tmp_path / "missing")
    assert not is_stale(os.devnull)


def test_the_daemon_of_a_mountpoint_is_found_by_its_arguments(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, argv in {
        "10": [b"python", b"-m", b"davfed_fuse", b"mount", b"-f", b"--ready-fd", b"4", b"/mnt/a"],
        "11": [b"python", b"-m", b"davfed_fuse", b"mount", b"-f", b"--ready-fd", b"4", b"/mnt/ab"],
        "12": [b"cat", b"/mnt/a"],
    }.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (proc / "self").mkdir()
    assert daemon_pid("/mnt/a", proc=str(proc)) == 10
    assert daemon_pid("/mnt/ab", proc=str(proc)) == 11
    assert daemon_pid("/mnt/b", proc=str(proc)) is None
