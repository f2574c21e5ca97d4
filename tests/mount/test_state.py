"""The daemon's per-file state lives as long as the kernel's interest in the file.

Read from outside, on a real mount, through the root's extended attributes
``user.davfed.pid`` and ``user.davfed.tables`` (a JSON object of table sizes).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import Mounter, requires_fuse, the_daemon

pytestmark = [pytest.mark.mount, requires_fuse]

FILE_DIRS = 20  # of 1,000 files each: 20,000 files for the test
LISTINGS = 50
FILES_PER_DIR = 1000
BIG_DIR_ENTRIES = 5000

#: Tables that hold per-inode, per-handle or per-file state: all back to where they
#: started once the kernel has forgotten everything.
PER_FILE = (
    "inodes",
    "paths",
    "lookup_counts",
    "open_files",
    "open_dirs",
    "opened_as",
    "readers",
    "remembered_targets",
)

#: The metadata caches: entries live their TTL (and the root's may have expired).
METADATA = ("attr_cache", "listing_cache", "negative_cache", "metadata_requests")


@pytest.fixture(scope="module")
def state_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24,000 one-byte files in directories of 1,000, and an empty-file directory of 5,000."""
    root = tmp_path_factory.mktemp("statetree")
    for d in range(FILE_DIRS):
        directory = root / f"d{d:02d}"
        directory.mkdir()
        for f in range(FILES_PER_DIR):
            fd = os.open(directory / f"f{f:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    big = root / "big"
    big.mkdir()
    for i in range(BIG_DIR_ENTRIES):
        os.close(os.open(big / f"e{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))
    (root / "one.txt").write_bytes(b"one\n")
    return root


@pytest.fixture(scope="module")
def state_fed(state_tree: Path) -> Iterator[TestFederation]:
    with TestFederation(state_tree, endpoints=1) as fed:
        yield fed


def tables(mnt: Path) -> dict[str, int]:
    value: dict[str, int] = json.loads(os.getxattr(mnt, "user.davfed.tables"))
    return value


def drop_dentries() -> None:
    """Make the kernel drop every unused dentry and inode (and so forget them)."""
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def per_file(sizes: dict[str, int]) -> dict[str, int]:
    return {name: sizes[name] for name in PER_FILE}


def wait_per_file_tables(mnt: Path, expected: dict[str, int], timeout: float = 20) -> None:
    """Wait until the kernel's forgets have reached the daemon (they are sent in batches)."""
    deadline = time.monotonic() + timeout
    while (now := per_file(tables(mnt))) != expected:
        assert time.monotonic() < deadline, f"tables stay at {now}, not {expected}"
        drop_dentries()
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def read_one_byte(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1)
    finally:
        os.close(fd)


def open_and_read(paths: Iterable[Path]) -> None:
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(read_one_byte, paths)) == {b"x"}


def test_the_root_tells_its_pid_and_table_sizes(
    state_fed: TestFederation, mounter: Mounter
) -> None:
    mnt = mounter(state_fed.url)
    assert {"user.davfed.pid", "user.davfed.tables"} <= set(os.listxattr(mnt))
    assert int(os.getxattr(mnt, "user.davfed.pid")) == the_daemon(mnt)
    sizes = tables(mnt)
    assert set(PER_FILE) <= set(sizes)
    assert all(isinstance(n, int) and n >= 0 for n in sizes.values())
    assert sizes["inodes"] == 1, "the root alone"
    for name in ("user.davfed.other", "security.selinux", "trusted.x"):
        with pytest.raises(OSError) as missing:
            os.getxattr(mnt, name)
        assert missing.value.errno == errno.ENODATA
    assert os.listxattr(mnt / "one.txt") == [
        "user.davfed.replica",
        "user.davfed.cached",
        "user.davfed.etag",
    ]
    with pytest.raises(OSError) as missing:
        os.getxattr(mnt / "one.txt", "user.davfed.pid")
    assert missing.value.errno == errno.ENODATA
    with pytest.raises(OSError) as denied:
        os.setxattr(mnt, "user.davfed.pid", b"1")
    assert denied.value.errno == errno.EROFS
    assert (mnt / "one.txt").read_bytes() == b"one\n", "the mount still serves files"


def test_a_redirect_target_outlives_a_close_but_not_a_forget(
    state_fed: TestFederation, mounter: Mounter
) -> None:
    # Re-opening a file soon reuses its 302 target (one round trip less per open):
    # the target is dropped when the kernel forgets the inode, not when a file closes.
    mnt = mounter(state_fed.url, "-o", "cache_size=0")
    start = per_file(tables(mnt))
    assert (mnt / "one.txt").read_bytes() == b"one\n"
    after_close = tables(mnt)
    assert after_close["remembered_targets"] == start["remembered_targets"] + 1
    assert after_close["open_files"] == 0 and after_close["opened_as"] == 1
    assert (mnt / "one.txt").read_bytes() == b"one\n"
    assert tables(mnt)["remembered_targets"] == after_close["remembered_targets"]
    wait_per_file_tables(mnt, start)


def test_tables_come_back_with_the_block_cache(state_fed: TestFederation, mounter: Mounter) -> None:
    mnt = mounter(state_fed.url)
    start = per_file(tables(mnt))
    paths = [mnt / "d00" / f"f{f:04d}" for f in range(FILES_PER_DIR)]
    open_and_read(paths)
    busy = tables(mnt)
    assert busy["opened_as"] == busy["remembered_targets"] == FILES_PER_DIR
    assert busy["open_files"] == 0
    drop_dentries()
    wait_per_file_tables(mnt, start)
    open_and_read(paths)  # again, from the cache: no redirect to remember
    assert tables(mnt)["remembered_targets"] == 0
    drop_dentries()
    wait_per_file_tables(mnt, start)


@pytest.mark.slow
def test_tables_and_rss_come_back_after_20000_files_and_50_listings(
    state_fed: TestFederation, mounter: Mounter
) -> None:
    # Metadata is cached 3 s here (60 s by default), so that those caches too are
    # back to their starting size a few seconds after the last request. Without the
    # block cache (cache_size=0) every read goes to the federation and its redirect
    # target is remembered; with it, each one-byte file would add a block to the
    # cache's index, which is the cache's content (bounded by cache_size), not
    # per-file state (test_tables_come_back_with_the_block_cache covers its readers).
    mnt = mounter(
        state_fed.url, "-o", "cache_size=0,attr_timeout=3,dir_timeout=3,negative_timeout=3"
    )
    pid = int(os.getxattr(mnt, "user.davfed.pid"))
    start = tables(mnt)
    assert start["inodes"] == 1 and start["remembered_targets"] == 0

    def read_dirs(dirs: range) -> dict[str, int]:
        """Open and read every file of ``dirs``, a directory at a time, and the tables
        at their fullest. The kernel drops its dentries after each directory, as it
        would under memory pressure: so every round reaches the same peak of live
        files, and RSS compares like with like (Python keeps a dict's table at its
        largest size and pymalloc keeps arenas that are not wholly free)."""
        peak: dict[str, int] = {}
        for d in dirs:
            directory = mnt / f"d{d:02d}"
            os.listdir(directory)  # one PROPFIND for the attributes of its 1,000 files
            open_and_read(directory / f"f{f:04d}" for f in range(FILES_PER_DIR))
            peak = {name: max(n, peak.get(name, 0)) for name, n in tables(mnt).items()}
            drop_dentries()
        return peak

    def list_big_dir() -> None:
        assert len(os.listdir(mnt / "big")) == BIG_DIR_ENTRIES

    # The test: 20,000 distinct files opened and read, and a 5,000-entry directory
    # listed 50 times with the kernel's dentries dropped between listings (each
    # listing is 5,000 lookups that the kernel forgets), in two equal halves.
    #
    # RSS is compared between the ends of the halves, not with the fresh daemon:
    # the first half fills what rightly stays for the life of the mount
    # (connection and thread pools, glibc's cache of thread stacks, lazily
    # imported modules, pymalloc's arenas, dict tables at their largest), and how
    # much of it depends on the peak concurrency the machine happened to allow.
    # State kept per file or per listing would grow again in the second half: at
    # a kilobyte per file, by 10 MB, about 15% of this daemon.
    half = FILE_DIRS // 2
    peak = read_dirs(range(half))
    for _ in range(LISTINGS // 2):
        list_big_dir()
        drop_dentries()
    wait_per_file_tables(mnt, per_file(start))
    rss_start = rss_kib(pid)
    peak = read_dirs(range(half, FILE_DIRS))
    assert peak["inodes"] > FILES_PER_DIR and peak["opened_as"] >= FILES_PER_DIR
    assert peak["remembered_targets"] >= FILES_PER_DIR
    for _ in range(LISTINGS - LISTINGS // 2):
        list_big_dir()
        drop_dentries()
    wait_per_file_tables(mnt, per_file(start))
    deadline = time.monotonic() + 10
    while any((now := tables(mnt))[name] > start[name] for name in METADATA):
        assert time.monotonic() < deadline, f"metadata caches stay at {now}, not {start}"
        time.sleep(0.1)
    rss_end = rss_kib(pid)
    print(f"RSS between the halves: {rss_start} -> {rss_end} KiB")
    assert rss_end <= rss_start * 1.10, f"RSS grew from {rss_start} KiB to {rss_end} KiB"
