"""``davfed prefetch`` and ``davfed cache`` without a mount: pure helpers, reporters,
reading local files, and the cache index read without its lock."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
from pathlib import Path

import pytest

from davfed_fuse.cache import stats as cachestats
from davfed_fuse.cache.blockcache import BlockCache, FileIdentity
from davfed_fuse.cli import prefetch, prefetch_files, prefetch_progress
from davfed_fuse.cli.prefetch_files import Failure, FileResult, Plan, Summary, Target
from davfed_fuse.cli.prefetch_progress import (
    JsonReporter,
    PlainReporter,
    RateMeter,
    Snapshot,
    eta,
    format_duration,
)
from davfed_fuse.errors import UsageError
from davfed_fuse.system.mounttable import MountEntry, containing_mount


def entry(mountpoint: str, fstype: str) -> MountEntry:
    return MountEntry(1, 0, "0:1", "/", mountpoint, "rw", fstype, "src", "rw")


ENTRIES = [
    entry("/", "ext4"),
    entry("/dynafed/belle", "fuse.davfed"),
    entry("/dynafed/belle/nested", "tmpfs"),
    entry("/dynafed/belle2", "nfs"),
]


# --- formatting, ETA, rates ------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1536, "1.5 kB"), (5 * 10**9, "5.0 GB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert cachestats.format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-:--"),
        (float("inf"), "-:--"),
        (0, "0:00"),
        (59.4, "0:59"),
        (75, "1:15"),
        (3725, "1:02:05"),
        (-3, "0:00"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_eta() -> None:
    assert eta(0, 0.0) == 0.0
    assert eta(-5, 10.0) == 0.0
    assert eta(100, 0.0) is None
    assert eta(100, 50.0) == 2.0


def test_errno_name() -> None:
    assert prefetch_files.errno_name(errno.ENOENT) == "ENOENT"
    assert prefetch_files.errno_name(errno.EIO) == "EIO"
    assert prefetch_files.errno_name(None) == "EIO"
    assert prefetch_files.errno_name(99999) == "errno 99999"


def test_rate_meter_uses_a_sliding_window() -> None:
    meter = RateMeter(window=10)
    assert meter.rate() == 0.0
    meter.add(0, 0)
    meter.add(1, 100)
    assert meter.rate() == 100.0
    for t in range(2, 31):  # 100 B/s, then 1000 B/s from t=21 on
        meter.add(t, 100 * t if t <= 20 else 2000 + 1000 * (t - 20))
    assert meter.rate() == pytest.approx(1000.0, rel=0.15)


def test_snapshot_line() -> None:
    snap = Snapshot(
        elapsed=3,
        files_done=1,
        files_total=3,
        bytes_done=10**9,
        bytes_total=4 * 10**9,
        rate=5e8,
    )
    assert snap.eta == 6.0
    assert snap.line() == "1.0 GB of 4.0 GB (25%), 1/3 files, 500.0 MB/s, ETA 0:06"


def test_summary_line_and_json() -> None:
    ok = Summary(files_ok=3, bytes=60 * 2**20, seconds=0.5, failures=())
    assert ok.exit_status == 0
    assert ok.line() == "3 files, 62.9 MB (62914560 bytes) in 0.50 s, 125.8 MB/s; 0 failed"
    failures = (
        Failure("/m/a", errno.ENOENT, "No such file or directory"),
        Failure("/m/b", errno.EIO, "Input/output error"),
        Failure("/m/c", errno.ENOENT, "No such file or directory"),
    )
    bad = Summary(files_ok=1, bytes=1, seconds=0.0, failures=failures)
    assert bad.exit_status == 2
    assert bad.line() == "1 file, 1 B (1 bytes) in 0.00 s, 0.0 MB/s; 3 failed (EIO 1, ENOENT 2)"
    record = bad.as_json()
    assert record["failed"] == 3
    assert record["failures"][0] == {
        "path": "/m/a",
        "errno": "ENOENT",
        "error": "No such file or directory",
    }
    assert failures[0].line() == "/m/a: ENOENT (No such file or directory)"


# --- which mount a path is on ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "mountpoint"),
    [
        ("/dynafed/belle", "/dynafed/belle"),
        ("/dynafed/belle/a/b.root", "/dynafed/belle"),
        ("/dynafed/belle/nested/x", "/dynafed/belle/nested"),
        ("/dynafed/belle2/x", "/dynafed/belle2"),
        ("/dynafed/bellex", "/"),
        ("/tmp", "/"),
    ],
)
def test_containing_mount(path: str, mountpoint: str) -> None:
    found = containing_mount(path, ENTRIES)
    assert found is not None and found.mountpoint == mountpoint


def test_collect_refuses_paths_outside_davfed_before_reading_anything() -> None:
    with pytest.raises(UsageError, match=r"/tmp/x is not inside a davfed mount.*ext4"):
        prefetch_files.collect(["/dynafed/belle/a", "/tmp/x"], [], ENTRIES)
    with pytest.raises(UsageError, match=r"nested.*tmpfs"):
        prefetch_files.collect([], ["/dynafed/belle/nested"], ENTRIES)


def test_collect_plain_files_and_directories(tmp_path: Path) -> None:
    """``collect`` itself, with a fake mount table that calls tmp_path a davfed mount."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "a").write_bytes(b"a" * 10)
    (tmp_path / "d" / "b").write_bytes(b"b" * 30)
    (tmp_path / "d" / "e" / "c").write_bytes(b"c" * 20)
    entries = [entry("/", "ext4"), entry(str(tmp_path.resolve()), "fuse.davfed")]
    plan = prefetch_files.collect(
        [str(tmp_path / "a"), str(tmp_path / "missing"), str(tmp_path / "d" / "b")],
        [str(tmp_path / "d")],
        entries,
    )
    assert [(Path(t.path).name, t.size) for t in plan.targets] == [("b", 30), ("c", 20), ("a", 10)]
    assert plan.total_bytes == 60
    assert [(Path(f.path).name, f.name) for f in plan.failures] == [("missing", "ENOENT")]
    with pytest.raises(UsageError, match="is a directory; use -r"):
        prefetch_files.collect([str(tmp_path / "d")], [], entries)
    with pytest.raises(UsageError, match="not a directory"):
        prefetch_files.collect([], [str(tmp_path / "a")], entries)


# --- reading and reporting -------------------------------------------------------------


def test_read_file_reads_everything_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(10_000))
    seen: list[int] = []
    assert prefetch_files.read_file(str(path), seen.append, threading.Event(), chunk=4096) == 10_000
    assert seen == [4096, 4096, 1808]
    stop = threading.Event()
    stop.set()
    assert prefetch_files.read_file(str(path), seen.append, stop, chunk=4096) == 0


def test_prefetch_reads_a_plan_and_reports_json(tmp_path: Path) -> None:
    files = {}
    for i, size in enumerate([5000, 0, 123_457]):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(size))
        files[str(path)] = size
    plan = Plan(
        targets=[Target(p, s) for p, s in files.items()] + [Target(str(tmp_path / "gone"), 7)],
        failures=[Failure(str(tmp_path / "missing"), errno.ENOENT, "No such file or directory")],
    )
    out = io.StringIO()
    summary = prefetch.prefetch(
        plan, JsonReporter(io.StringIO(), out, 0.0, False), jobs=3, chunk=4096
    )
    assert summary.files_ok == 3
    assert summary.bytes == sum(files.values())
    assert sorted(f.name for f in summary.failures) == ["ENOENT", "ENOENT"]
    assert summary.exit_status == 2
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == {"event": "start", "files": 4, "bytes": sum(files.values()) + 7}
    assert records[-1]["event"] == "summary"
    assert records[-1]["bytes"] == sum(files.values())
    by_path = {r["path"]: r for r in records if r["event"] == "file"}
    assert {p: by_path[p]["bytes"] for p in files} == files
    assert by_path[str(tmp_path / "gone")]["errno"] == "ENOENT"
    assert by_path[str(tmp_path / "missing")]["ok"] is False


def test_plain_reporter_prints_every_interval() -> None:
    err = io.StringIO()
    reporter = PlainReporter(err, interval=5)
    reporter.start(2, 2000)

    def snap(elapsed: float, done: int) -> Snapshot:
        return Snapshot(elapsed, 0, 2, done, 2000, 100.0)

    for t in range(0, 13):
        reporter.tick(snap(t, 100 * t))
    reporter.file_done(FileResult("/m/x", 0, 0.1, Failure("/m/x", errno.EIO, "I/O error")))
    reporter.finish(Summary(1, 1000, 10.0, (Failure("/m/x", errno.EIO, "I/O error"),)))
    lines = err.getvalue().splitlines()
    assert lines[0] == "davfed prefetch: 2 files, 2.0 kB"
    assert lines[1] == "davfed prefetch: 500 B of 2.0 kB (25%), 0/2 files, 100 B/s, ETA 0:15"
    assert lines[2].startswith("davfed prefetch: 1.0 kB of 2.0 kB (50%)")
    assert lines[3] == "davfed prefetch: /m/x: EIO (I/O error)"
    assert lines[4].startswith("davfed prefetch: 1 file, 1.0 kB (1000 bytes) in 10.00 s")
    assert len(lines) == 5


def test_quiet_shows_only_failures() -> None:
    err = io.StringIO()
    reporter = prefetch_progress.choose_reporter(quiet=True, as_json=False, interval=1, err=err)
    reporter.start(1, 10)
    reporter.tick(Snapshot(100, 0, 1, 0, 10, 0.0))
    reporter.failed(Failure("/m/x", errno.ENOENT, "No such file or directory"))
    reporter.finish(Summary(0, 0, 1.0, ()))
    assert err.getvalue() == "davfed prefetch: /m/x: ENOENT (No such file or directory)\n"


def test_reporter_choice() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    choose = prefetch_progress.choose_reporter
    assert type(choose(quiet=False, as_json=False, interval=1, err=io.StringIO())) is PlainReporter
    assert (
        type(choose(quiet=False, as_json=False, interval=1, err=Tty()))
        is prefetch_progress.RichReporter
    )
    assert type(choose(quiet=True, as_json=True, interval=1, err=Tty())) is JsonReporter


# --- the cache seen from outside ---------------------------------------------------------

PROC_LOCKS = """\
1: POSIX  ADVISORY  WRITE 777 08:01:1234 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:2a:5678 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5151 00:2a:5678 0 EOF
3: OFDLCK ADVISORY  READ  -1 00:2b:99 0 EOF
"""


def test_holder_in_proc_locks() -> None:
    assert cachestats.holder_in_proc_locks(PROC_LOCKS, 0x00, 0x2A, 5678) == 4242
    assert cachestats.holder_in_proc_locks(PROC_LOCKS, 8, 1, 1234) == 777
    assert cachestats.holder_in_proc_locks(PROC_LOCKS, 0, 0x2A, 1) is None
    assert cachestats.holder_in_proc_locks("garbage\n1: x y z q:r:s\n", 0, 0, 0) is None


async def fill(cache: BlockCache, url: str, size: int) -> bytes:
    data = os.urandom(size)

    async def fetch(start: int, end: int) -> bytes:
        return data[start:end]

    ident = FileIdentity(url, size, '"etag"', 1)
    assert await cache.read(ident, 0, size, fetch) == data
    assert await cache.read(ident, 0, 100, fetch) == data[:100]
    return data


async def test_stats_while_the_cache_is_locked_and_clean_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "127.0.0.1-0123456789ab"
    other = tmp_path / "example.org-ba9876543210"
    assert cachestats.find_roots(tmp_path) == []
    with BlockCache(other, max_bytes=10**6, block_size=1000):
        pass  # an idle, empty cache
    with BlockCache(root, max_bytes=10**6, block_size=1000) as cache:
        await fill(cache, "http://fed/a", 2500)
        await fill(cache, "http://fed/b", 1000)
        assert cachestats.find_roots(tmp_path) == [root, other]
        assert cachestats.find_roots(root) == [root]
        stats = cachestats.read_stats(root)  # without the lock, which we hold
        assert (stats.blocks, stats.bytes, stats.files) == (4, 3500, 2)
        assert stats.block_size == 1000
        assert stats.locked_by == os.getpid()
        assert cachestats.stats_command(tmp_path, as_json=True) == 0
        report = json.loads(capsys.readouterr().out)
        assert [c["in_use"] for c in report["caches"]] == [True, False]
        assert report["caches"][0]["counters_may_lag"] is True
        assert report["total"]["blocks"] == 4
        assert cachestats.stats_command(tmp_path) == 0
        out = capsys.readouterr().out
        assert f"in use by a running davfed (pid {os.getpid()})" in out and "may lag" in out
        # clean refuses the locked cache (exit 32), still cleans the idle one.
        assert cachestats.clean_command(tmp_path) == 32
        captured = capsys.readouterr()
        assert "is in use by a running davfed" in captured.err
        assert "unmount it first" in captured.err
        assert cachestats.read_stats(root).blocks == 4
    stats = cachestats.read_stats(root)  # counters flushed at close
    assert stats.locked_by is None
    assert (stats.hits, stats.misses, stats.bytes_fetched) == (2, 4, 3500)
    assert stats.hit_rate == pytest.approx(2 / 6)
    assert cachestats.clean_command(tmp_path) == 0
    assert f"{root}: freed 4 blocks, 3.5 kB (3500 bytes)" in capsys.readouterr().out
    stats = cachestats.read_stats(root)
    assert (stats.blocks, stats.bytes, stats.hits, stats.misses) == (0, 0, 0, 0)


def test_stats_of_a_missing_or_broken_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cachestats.stats_command(tmp_path / "nothing") == 0
    assert "no davfed caches in" in capsys.readouterr().out
    broken = tmp_path / "h-000000000000" / "v1"
    broken.mkdir(parents=True)
    (broken / "index.sqlite3").write_bytes(b"not a database" * 100)
    assert cachestats.stats_command(tmp_path) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(cachestats.StatsError):
        cachestats.read_stats(tmp_path)
