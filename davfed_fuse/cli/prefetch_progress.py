"""``davfed prefetch``'s progress display: what the user sees while the files are read.

Owns: formatting durations, the recent transfer rate and the time left, and the four
displays: failures only (``--quiet``), a rich progress bar when stderr is a terminal,
plain lines every few seconds otherwise, or JSON records on stdout (``--json``); each
ends with the summary.
Must not import: pyfuse3, trio, httpx; rich only when a terminal shows the bar.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from davfed_fuse.cache.stats import format_bytes
from davfed_fuse.cli.prefetch_files import Failure, FileResult, Summary

#: Speed and ETA are computed over this much recent history.
RATE_WINDOW = 10.0


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
