"""``davfed prefetch``: warm a mount's block cache for a job's inputs before the job starts.

Owns: the command line, and running a prefetch: the files (``prefetch_files``) are read
in parallel threads while the main thread keeps the display (``prefetch_progress``) up
to date, then the summary.
Must not import: pyfuse3, trio, httpx (it is a plain client of the mount).

Exit status: 0 every file was read, 1 usage error (including a path outside a davfed
mount), 2 some file could not be read (each failure is reported with its errno name).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.cli.prefetch_files import (
    CHUNK,
    Failure,
    FileResult,
    Plan,
    Summary,
    Target,
    collect,
    read_file,
)
from davfed_fuse.cli.prefetch_progress import RateMeter, Reporter, Snapshot, choose_reporter
from davfed_fuse.errors import UsageError

DEFAULT_JOBS = 4
DEFAULT_INTERVAL = 5.0
#: How often the main thread refreshes progress (rich redraws on its own timer).
TICK = 0.2


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed prefetch",
        description="Warm davfed's block cache for a job's inputs: read the files through "
        "the davfed mount they are on (several at once), so the job finds them on local "
        "disk. A progress bar on a terminal, a line every few seconds otherwise.",
        epilog="Exit status: 0 all files read, 1 usage error or a path outside a davfed "
        "mount, 2 some file could not be read. docs/prefetch.md",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files in a davfed mount")
    parser.add_argument(
        "-r",
        "--recursive",
        dest="directories",
        action="append",
        default=[],
        metavar="DIR",
        help="every file under DIR (repeatable)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help="files read in parallel (default: %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="report failures only")
    parser.add_argument("--json", action="store_true", help="JSON records on stdout")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between progress lines without a terminal (default: %(default)s)",
    )
    args = parser.parse_intermixed_args(list(argv))
    return run(
        args.paths,
        args.directories,
        jobs=args.jobs,
        quiet=args.quiet,
        as_json=args.json,
        interval=args.interval,
    )


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
