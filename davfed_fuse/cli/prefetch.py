"""``davfed prefetch``: warm a mount's block cache for a job's inputs before the job starts.

Owns: checking that every path is inside a davfed mount, collecting the files (``-r``
walks directories), reading them through the mount in parallel threads (large
sequential reads, so the daemon's read-ahead runs at full width; the pages read are
dropped from the kernel page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)``, so the
warmed data lives in davfed's disk cache, not in RAM), and reporting progress: a rich
progress bar when stderr is a terminal, plain periodic lines otherwise, or JSON records
(``--json``), then a summary.
Must not import: pyfuse3, trio, httpx (it is a plain client of the mount).

Exit status: 0 every file was read, 1 usage error (including a path outside a davfed
mount), 2 some file could not be read (each failure is reported with its errno name).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

from davfed_fuse.cache.stats import format_bytes
from davfed_fuse.errors import UsageError
from davfed_fuse.system.mounttable import MountEntry, read_mountinfo

EXIT_OK = 0
EXIT_FAILED = 2
#: Bytes per read(2). Large enough that the kernel sends davfed big FUSE reads and the
#: daemon sees one sequential stream; jobs * CHUNK bytes of memory in all.
CHUNK = 8 << 20
DEFAULT_JOBS = 4
DEFAULT_INTERVAL = 5.0
#: How often the main thread refreshes progress (rich redraws on its own timer).
TICK = 0.2
#: Speed and ETA are computed over this much recent history.
RATE_WINDOW = 10.0


# --- pure helpers --------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``75`` → ``1:15``, ``3725`` → ``1:02:05``, ``None`` (unknown) → ``-:--``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(remaining: int, rate: float) -> float | None:
    """Seconds until ``remaining`` bytes are read at ``rate`` bytes/s; None if unknown."""
    if remaining <= 0:
        return 0.0
    if rate <= 0:
        return None
    return remaining / rate


def errno_name(code: int | None) -> str:
    """``2`` → ``ENOENT``; unknown or missing codes → ``EIO``-style fallbacks."""
    if code is None:
        return "EIO"
    return errno.errorcode.get(code, f"errno {code}")


class RateMeter:
    """Bytes per second over the last ``window`` seconds (the whole run until then)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def containing_mount(path: str, entries: Sequence[MountEntry]) -> MountEntry | None:
    """The mount ``path`` (made absolute, symlinks resolved) lives on: the deepest
    mountpoint that is ``path`` or one of its ancestors (the topmost if stacked)."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in entries:
        point = entry.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best


# --- collecting ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class Failure:
    path: str
    errno: int | None
    message: str

    @property
    def name(self) -> str:
        return errno_name(self.errno)

    def line(self) -> str:
        return f"{self.path}: {self.name} ({self.message})"

    @classmethod
    def from_os_error(cls, path: str, exc: OSError) -> Failure:
        return cls(path, exc.errno, exc.strerror or str(exc))


@dataclass(slots=True)
class Plan:
    targets: list[Target] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.size for t in self.targets)


def _require_davfed(path: str, entries: Sequence[MountEntry]) -> None:
    entry = containing_mount(path, entries)
    if entry is None or not entry.is_davfed:
        where = f"a {entry.fstype} mount on {entry.mountpoint}" if entry else "no mount"
        raise UsageError(
            f"prefetch: {path} is not inside a davfed mount (it is on {where}); "
            "prefetch reads files through a mounted davfed filesystem"
        )


def collect(
    paths: Iterable[str],
    directories: Iterable[str],
    entries: Sequence[MountEntry] | None = None,
) -> Plan:
    """The files to read: each of ``paths`` and every file under each of ``directories``.

    Files are deduplicated by resolved path and ordered largest first (the parallel
    readers finish together). A path that cannot be looked up, or a directory that
    cannot be listed, becomes a :class:`Failure`.

    Raises:
        UsageError: a path is not inside a davfed mount, or a path is a directory.
    """
    if entries is None:
        entries = read_mountinfo()
    paths, directories = list(paths), list(directories)
    for path in [*paths, *directories]:
        _require_davfed(path, entries)
    plan = Plan()
    seen: set[str] = set()

    def add(path: str, st: os.stat_result) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            plan.targets.append(Target(path, st.st_size))

    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            plan.failures.append(Failure.from_os_error(path, exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"prefetch: {path} is a directory; use -r {path}")
        if stat.S_ISREG(st.st_mode):
            add(path, st)
        else:
            plan.failures.append(Failure(path, errno.EINVAL, "not a regular file"))
    for top in directories:
        try:
            if not stat.S_ISDIR(os.stat(top).st_mode):
                raise UsageError(f"prefetch: -r {top}: not a directory")
        except OSError as exc:
            plan.failures.append(Failure.from_os_error(top, exc))
            continue

        def walk_error(exc: OSError, top: str = top) -> None:
            plan.failures.append(Failure.from_os_error(exc.filename or top, exc))

        for dirpath, dirnames, filenames in os.walk(top, onerror=walk_error):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError as exc:
                    plan.failures.append(Failure.from_os_error(path, exc))
                    continue
                if stat.S_ISREG(st.st_mode):
                    add(path, st)
    plan.targets.sort(key=lambda t: -t.size)
    return plan


# --- reading -------------------------------------------------------------------------


class Counters:
    """Progress shared by the reader threads and the reporting thread."""

    def __init__(self, files: int, total: int) -> None:
        self._lock = threading.Lock()
        self.files_total = files
        self.bytes_total = total
        self.files_done = 0
        self.bytes_done = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    def file_done(self, expected: int, read: int) -> None:
        """A file finished (or failed): account for a size that changed meanwhile."""
        with self._lock:
            self.files_done += 1
            self.bytes_total += read - expected


def read_file(
    path: str,
    on_bytes: Callable[[int], None],
    stop: threading.Event,
    chunk: int = CHUNK,
) -> int:
    """Read ``path`` sequentially to its end in ``chunk``-sized reads; return the bytes read.

    Pages are dropped from the page cache behind the reader (``POSIX_FADV_DONTNEED``).
    Stops early (returning what it read) when ``stop`` is set.

    Raises:
        OSError: open or read failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a wider kernel read-ahead
        buf = bytearray(chunk)
        offset = 0
        while not stop.is_set():
            n = os.readv(fd, [buf])
            if n == 0:
                break
            os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
            offset += n
            on_bytes(n)
        return offset
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    bytes: int
    seconds: float
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    files_ok: int
    bytes: int
    seconds: float
    failures: tuple[Failure, ...]

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def exit_status(self) -> int:
        return EXIT_FAILED if self.failures else EXIT_OK

    def line(self) -> str:
        files = f"{self.files_ok} file{'' if self.files_ok == 1 else 's'}"
        text = (
            f"{files}, {format_bytes(self.bytes)} ({self.bytes} bytes) in "
            f"{self.seconds:.2f} s, {self.mb_per_s:.1f} MB/s; "
        )
        if not self.failures:
            return text + "0 failed"
        counts = Counter(f.name for f in self.failures)
        detail = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        return text + f"{len(self.failures)} failed ({detail})"

    def as_json(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "files": self.files_ok,
            "failed": len(self.failures),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "failures": [
                {"path": f.path, "errno": f.name, "error": f.message} for f in self.failures
            ],
            "exit_status": self.exit_status,
        }


# --- reporting -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed: float
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate: float

    @property
    def eta(self) -> float | None:
        return eta(self.bytes_total - self.bytes_done, self.rate)

    def line(self) -> str:
        pct = 100 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0
        return (
            f"{format_bytes(self.bytes_done)} of {format_bytes(self.bytes_total)} "
            f"({pct:.0f}%), {self.files_done}/{self.files_total} files, "
            f"{format_bytes(self.rate)}/s, ETA {format_duration(self.eta)}"
        )


class Reporter:
    """What the user sees; this base class shows nothing but failures."""

    PREFIX = "davfed prefetch: "

    def __init__(self, err: IO[str]) -> None:
        self.err = err

    def start(self, files: int, total: int) -> None:
        pass

    def tick(self, snap: Snapshot) -> None:
        pass

    def failed(self, failure: Failure) -> None:
        print(f"{self.PREFIX}{failure.line()}", file=self.err, flush=True)

    def file_done(self, result: FileResult) -> None:
        if result.failure is not None:
            self.failed(result.failure)

    def finish(self, summary: Summary) -> None:
        pass


class PlainReporter(Reporter):
    """A line every ``interval`` seconds on stderr, and the summary."""

    def __init__(self, err: IO[str], interval: float) -> None:
        super().__init__(err)
        self.interval = interval
        self._next = interval

    def start(self, files: int, total: int) -> None:
        print(f"{self.PREFIX}{files} files, {format_bytes(total)}", file=self.err, flush=True)

    def tick(self, snap: Snapshot) -> None:
        if snap.elapsed >= self._next:
            self._next = snap.elapsed + self.interval
            print(f"{self.PREFIX}{snap.line()}", file=self.err, flush=True)

    def finish(self, summary: Summary) -> None:
        print(f"{self.PREFIX}{summary.line()}", file=self.err, flush=True)


class JsonReporter(Reporter):
    """One JSON object per line on stdout: start, progress (unless quiet), file, summary."""

    def __init__(self, err: IO[str], out: IO[str], interval: float, quiet: bool) -> None:
        super().__init__(err)
        self.out = out
        self.interval = interval
        self.quiet = quiet
        self._next = interval

    def _emit(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def start(self, files: int, total: int) -> None:
        self._emit({"event": "start", "files": files, "bytes": total})

    def failed(self, failure: Failure) -> None:
        self._emit(
            {
                "event": "file",
                "path": failure.path,
                "ok": False,
                "errno": failure.name,
                "error": failure.message,
            }
        )

    def file_done(self, result: FileResult) -> None:
        if result.failure is not None:
            self.failed(result.failure)
            return
        self._emit(
            {
                "event": "file",
                "path": result.path,
                "ok": True,
                "bytes": result.bytes,
                "seconds": round(result.seconds, 3),
            }
        )

    def tick(self, snap: Snapshot) -> None:
        if self.quiet or snap.elapsed < self._next:
            return
        self._next = snap.elapsed + self.interval
        self._emit(
            {
                "event": "progress",
                "files_done": snap.files_done,
                "files_total": snap.files_total,
                "bytes_done": snap.bytes_done,
                "bytes_total": snap.bytes_total,
                "bytes_per_s": round(snap.rate),
                "eta_s": None if snap.eta is None else round(snap.eta, 1),
            }
        )

    def finish(self, summary: Summary) -> None:
        self._emit(summary.as_json())


class RichReporter(Reporter):
    """rich's progress bar on stderr (a terminal): files, bytes, speed, time left."""

    def __init__(self, err: IO[str]) -> None:
        super().__init__(err)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=err, no_color=bool(os.environ.get("NO_COLOR")))
        self.progress = Progress(
            TextColumn("prefetch"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None

    def start(self, files: int, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("prefetch", total=total, files=f"0/{files}")

    def tick(self, snap: Snapshot) -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=snap.bytes_done,
                total=snap.bytes_total,
                files=f"{snap.files_done}/{snap.files_total}",
            )

    def failed(self, failure: Failure) -> None:
        # soft_wrap: a long path stays on one line (copyable, greppable), never re-wrapped.
        self.console.print(
            f"{self.PREFIX}{failure.line()}",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def finish(self, summary: Summary) -> None:
        self.progress.stop()
        self.console.print(
            f"{self.PREFIX}{summary.line()}", markup=False, highlight=False, soft_wrap=True
        )


def choose_reporter(
    *,
    quiet: bool,
    as_json: bool,
    interval: float,
    err: IO[str] | None = None,
    out: IO[str] | None = None,
) -> Reporter:
    err = sys.stderr if err is None else err
    out = sys.stdout if out is None else out
    if as_json:
        return JsonReporter(err, out, interval, quiet)
    if quiet:
        return Reporter(err)
    if err.isatty():
        return RichReporter(err)
    return PlainReporter(err, interval)


# --- the command ---------------------------------------------------------------------


def prefetch(
    plan: Plan,
    reporter: Reporter,
    *,
    jobs: int = DEFAULT_JOBS,
    chunk: int = CHUNK,
    clock: Callable[[], float] = time.monotonic,
) -> Summary:
    """Read every file of ``plan`` through the mount with ``jobs`` threads."""
    counters = Counters(len(plan.targets), plan.total_bytes)
    meter = RateMeter()
    stop = threading.Event()
    results: list[FileResult] = []
    failures = list(plan.failures)
    start = clock()

    def snapshot() -> Snapshot:
        now = clock()
        meter.add(now, counters.bytes_done)
        return Snapshot(
            elapsed=now - start,
            files_done=counters.files_done,
            files_total=counters.files_total,
            bytes_done=counters.bytes_done,
            bytes_total=counters.bytes_total,
            rate=meter.rate(),
        )

    def work(target: Target) -> FileResult:
        began = clock()
        got = 0

        def count(n: int) -> None:
            nonlocal got
            got += n
            counters.add(n)

        try:
            read_file(target.path, count, stop, chunk)
        except OSError as exc:
            counters.file_done(target.size, got)
            failure = Failure.from_os_error(target.path, exc)
            return FileResult(target.path, got, clock() - began, failure)
        counters.file_done(target.size, got)
        return FileResult(target.path, got, clock() - began)

    reporter.start(counters.files_total, counters.bytes_total)
    for failure in plan.failures:
        reporter.failed(failure)
    snapshot()
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="prefetch")
    try:
        pending: set[Future[FileResult]] = {pool.submit(work, t) for t in plan.targets}
        while pending:
            done, pending = wait(pending, timeout=TICK, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results.append(result)
                if result.failure is not None:
                    failures.append(result.failure)
                reporter.file_done(result)
            reporter.tick(snapshot())
    except BaseException:
        stop.set()  # readers stop after their current chunk
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    seconds = clock() - start
    summary = Summary(
        files_ok=sum(1 for r in results if r.failure is None),
        bytes=sum(r.bytes for r in results),
        seconds=seconds,
        failures=tuple(failures),
    )
    reporter.finish(summary)
    return summary


def run(
    paths: Sequence[str],
    directories: Sequence[str],
    *,
    jobs: int = DEFAULT_JOBS,
    quiet: bool = False,
    as_json: bool = False,
    interval: float = DEFAULT_INTERVAL,
) -> int:
    """``davfed prefetch``: returns the exit status (0, or 2 if a file failed).

    Raises:
        UsageError: nothing to do, a bad ``--jobs``, or a path outside a davfed mount.
    """
    if not paths and not directories:
        raise UsageError("prefetch: give at least one PATH or -r DIR")
    if jobs < 1:
        raise UsageError(f"prefetch: --jobs must be at least 1, not {jobs}")
    if interval <= 0:
        raise UsageError(f"prefetch: --interval must be positive, not {interval:g}")
    plan = collect(paths, directories)
    reporter = choose_reporter(quiet=quiet, as_json=as_json, interval=interval)
    return prefetch(plan, reporter, jobs=jobs).exit_status
