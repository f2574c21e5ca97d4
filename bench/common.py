"""What every row family of the benchmark uses: cleanup, processes, files, timing, logs.

Nothing here mounts anything; see ``mounts.py`` for the pieces under test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from davfed_fuse.system.mounttable import find_mount  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
RANDOM_READ = 64 * KiB
TTFB_BYTES = 1 * MiB
WAN_DELAY_MS = 25  # each way: 50 ms round trip
WAN_RATE = "1gbit"
WAN_TOOL = Path(os.environ.get("DAVFED_WAN_TOOL", REPO.parent / "shared" / "tools" / "wan"))
SERVER_ADDR = "169.254.77.2"
CLIENT_ADDR = "169.254.77.1"
MOUNT_HELPER = REPO / "bin" / "mount.davfed"
DAVFED = REPO / ".venv" / "bin" / "davfed"


class Quiet:
    """Whether progress lines are suppressed (``--json-only``)."""

    on = False


def say(message: str) -> None:
    """A progress line on stderr."""
    if not Quiet.on:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which."""


# --- cleanup -------------------------------------------------------------------------------


class Cleanup:
    """A stack of undo actions, run in reverse order; each one at most once."""

    def __init__(self) -> None:
        self._actions: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0

    def push(self, what: str, action: Callable[[], None]) -> int:
        self._next += 1
        self._actions[self._next] = (what, action)
        return self._next

    def release(self, key: int) -> None:
        """Run one action now (and forget it)."""
        entry = self._actions.pop(key, None)
        if entry is not None:
            self._run(*entry)

    def run_all(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop this
        try:
            while self._actions:
                key = max(self._actions)
                self._run(*self._actions.pop(key))
        finally:
            signal.signal(signal.SIGINT, old)

    @staticmethod
    def _run(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            print(f"[bench] cleanup of {what} failed: {exc}", file=sys.stderr)


CLEANUP = Cleanup()


def on_signal(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


# --- small tools ---------------------------------------------------------------------------


def run(
    cmd: list[str], *, check: bool = True, timeout: float | None = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}): {detail[-1:] or ''}")
    return proc


def in_netns(netns: str | None, cmd: list[str]) -> list[str]:
    # nsenter --net, never `ip netns exec` (its private mount namespace would hide FUSE mounts)
    return cmd if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 512M)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * (1024**power)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_paths(paths: list[Path], chunk: int = MiB) -> int:
    """Read files in order into one reused buffer (no hashing, no copies); bytes read."""
    buf = bytearray(chunk)
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total


def warm_source(path: Path) -> None:
    """Put the served file in the page cache: the storage server is not what we measure."""
    read_paths([path])


def mounted(mnt: Path) -> bool:
    return find_mount(mnt, resolve=False) is not None  # as given: never stat a mountpoint


def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not mounted(mnt):
        if proc.poll() is not None:
            raise BenchError(f"rclone exited with {proc.returncode} before mounting {mnt}")
        if time.monotonic() > deadline:
            raise BenchError(f"{mnt} not mounted after {timeout} s")
        time.sleep(0.05)


def proc_times(pid: int | None) -> tuple[float, float]:
    """(utime, stime) of a live process, in seconds ((0, 0) if unknown)."""
    if pid is None:
        return 0.0, 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a live process, in seconds (0 if unknown)."""
    return sum(proc_times(pid))


#: System counters whose change over a row is recorded (``vmstat``): huge-page faults
#: and compaction stalls (the daemon's fetch buffers ask for huge pages), pages
#: dirtied (block writes through the page cache instead of around it).
VMSTAT_KEYS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "nr_dirtied")


def vmstat() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in VMSTAT_KEYS:
                values[key] = int(value)
    except OSError:
        pass
    return values


def context_switches(pid: int | None) -> int:
    """Voluntary + involuntary context switches of a process so far (all its threads)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                    total += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return total


class CpuMeter:
    """A process's CPU over a stretch of work: total, user and system, per GiB; the
    system's :func:`vmstat` counters and the process's context switches alongside."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._vm0 = vmstat()
        self._cs0 = context_switches(pid) if pid is not None else 0
        self._t0 = proc_times(pid)

    def fields(self, nbytes: int | None = None) -> dict[str, Any]:
        if self.pid is None:
            return {}
        user, system = (b - a for a, b in zip(self._t0, proc_times(self.pid), strict=True))
        row: dict[str, Any] = {
            "cpu_s": round(user + system, 3),
            "cpu_user_s": round(user, 3),
            "cpu_sys_s": round(system, 3),
        }
        if nbytes:
            row["cpu_s_per_gib"] = round((user + system) / (nbytes / GiB), 3)
        vm1 = vmstat()
        row["vmstat"] = {k: vm1[k] - v for k, v in self._vm0.items() if k in vm1}
        row["context_switches"] = context_switches(self.pid) - self._cs0
        return row


def proc_hwm_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure(pid: int | None, work: Callable[[], int]) -> dict[str, Any]:
    """Time ``work()`` (returns bytes read); the process's CPU and peak RSS alongside."""
    meter = CpuMeter(pid)
    t0 = time.perf_counter()
    nbytes = work()
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "bytes": nbytes,
        "mb_s": round(nbytes / seconds / 1e6, 1),
        **meter.fields(nbytes),
    }
    if pid is not None:
        row["rss_peak_mb"] = proc_hwm_mb(pid)
    return row


def check_sample(path: Path, source: Path, size: int, samples: int = 8) -> None:
    """Compare a few 64 KiB pieces (first, last, random) of a mounted file with its source."""
    rng = random.Random(size)
    offsets = [0, max(0, size - RANDOM_READ)] + [
        rng.randrange(0, max(1, size - RANDOM_READ)) for _ in range(samples)
    ]
    with open(path, "rb", buffering=0) as a, open(source, "rb", buffering=0) as b:
        for off in offsets:
            if os.pread(a.fileno(), RANDOM_READ, off) != os.pread(b.fileno(), RANDOM_READ, off):
                raise BenchError(f"{path}: wrong bytes at offset {off}")


def random_offsets(size: int, count: int, seed: int) -> list[int]:
    """``count`` random 4 KiB-aligned offsets of 64 KiB reads in a file of ``size`` bytes."""
    rng = random.Random(seed)
    return [rng.randrange(0, (size - RANDOM_READ) // 4096 + 1) * 4096 for _ in range(count)]


def random_reads(path: Path, source: Path, size: int, count: int, seed: int) -> dict[str, Any]:
    """``count`` 64 KiB preads at random 4 KiB-aligned offsets; some are checked afterwards."""
    offsets = random_offsets(size, count, seed)
    kept: list[tuple[int, bytes]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for i, off in enumerate(offsets):
            data = os.pread(fd, RANDOM_READ, off)
            if i % 25 == 0:
                kept.append((off, data))
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    with open(source, "rb", buffering=0) as src:
        for off, data in kept:
            if os.pread(src.fileno(), RANDOM_READ, off) != data:
                raise BenchError(f"{path}: random read at {off} returned wrong bytes")
    return {
        "reads": count,
        "seconds": round(seconds, 4),
        "reads_per_s": round(count / seconds, 1),
    }


def ttfb_ms(path: Path) -> float:
    """open + the first 1 MiB read, in ms (metadata must be cached already)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < TTFB_BYTES:
            chunk = os.read(fd, TTFB_BYTES - got)
            if not chunk:
                break
            got += len(chunk)
        ms = (time.perf_counter() - t0) * 1000
    finally:
        os.close(fd)
    if got < TTFB_BYTES:
        raise BenchError(f"{path}: only {got} bytes")
    return round(ms, 1)


# sha256 of one file in 1 MiB reads (OpenSSL's sha256 is about 4x coreutils' sha256sum here)
HASHER = """
import hashlib, sys
h = hashlib.sha256()
buf = bytearray(1 << 20)
view = memoryview(buf)
with open(sys.argv[1], "rb", buffering=0) as f:
    while n := f.readinto(buf):
        h.update(view[:n])
print(h.hexdigest())
"""


def parallel_readers(path: Path, readers: int, expected_sha: str) -> dict[str, Any]:
    """``readers`` hashing processes on one file at once; all must get the right bytes."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", "-c", HASHER, str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(readers)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=1800)
            outputs.append(out.split()[0] if out else f"exit {proc.returncode}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - t0
    wrong = sum(1 for o in outputs if o != expected_sha)
    size = path.stat().st_size
    return {
        "readers": readers,
        "seconds": round(seconds, 3),
        "all_correct": wrong == 0,
        "wrong_readers": wrong,
        "aggregate_mb_s": round(readers * size / seconds / 1e6, 1),
        "file_mb_s": round(size / seconds / 1e6, 1),
    }


def settled(counter: Callable[[], int], timeout: float = 5.0) -> int:
    """A byte counter once it stops moving (nginx logs a request when it completes)."""
    last = counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = counter()
        if now == last:
            return now
        last = now
    return last


def log_requests(access_logs: list[Path], needle: str) -> list[str]:
    """The access-log lines (all endpoints) of requests whose line contains ``needle``."""
    found = []
    for i, path in enumerate(access_logs):
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
            found += [f"ep{i}: {line.strip()}" for line in f if needle in line]
    return found


def log_bytes(access_logs: list[Path]) -> int:
    """Body bytes in nginx access logs (first field of each line)."""
    total = 0
    for path in access_logs:
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
            for line in f:
                first = line.split(" ", 1)[0]
                if first.isdigit():
                    total += int(first)
    return total
