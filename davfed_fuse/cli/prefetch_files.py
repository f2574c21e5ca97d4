"""``davfed prefetch``'s files: which to read, reading one, and what came of it.

Owns: checking that every path is inside a davfed mount, collecting the files (``-r``
walks directories; largest first, each once), reading one file through the mount (large
sequential reads, so the daemon's read-ahead runs at full width; the pages read are
dropped from the kernel page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)``, so the
warmed data lives in davfed's disk cache, not in RAM), and the per-file results and the
summary of a run.
Must not import: pyfuse3, trio, httpx (it is a plain client of the mount).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from davfed_fuse.cache.stats import format_bytes
from davfed_fuse.errors import UsageError
from davfed_fuse.exitcodes import Exit
from davfed_fuse.system.mounttable import MountEntry, containing_mount, read_mountinfo

#: Bytes per read(2). Large enough that the kernel sends davfed big FUSE reads and the
#: daemon sees one sequential stream; jobs * CHUNK bytes of memory in all.
CHUNK = 8 << 20


def errno_name(code: int | None) -> str:
    """``2`` → ``ENOENT``; unknown or missing codes → ``EIO``-style fallbacks."""
    if code is None:
        return "EIO"
    return errno.errorcode.get(code, f"errno {code}")


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
        return Exit.FAILED if self.failures else Exit.OK

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
