"""The fault soak of issue 6: concurrent readers through a real davfed mount while faults cycle.

``bench/soak [--duration S] [--size 10G] [--quick] [--readers 32]`` (``bench/SOAK.md``).

A test federation (3 nginx endpoints) serves a generated tree of files whose
content is a pure function of (file seed, MiB index), so every byte a reader gets
is checked without keeping data in memory. ``--readers`` processes read through
a davfed mount (whole files sequentially, and batches of random reads) while a
fault injector cycles faults across the endpoints. A monitor follows the daemon
(pid, mount, VmHWM, CPU). The run ends with a human summary on stdout and one
JSON object as the last line. Exit status: 0 clean, 1 wrong bytes, a dead or
restarted daemon, a lost mount or a hung reader (or an error in the harness).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import hashlib
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from davfed_fuse.system.mounttable import daemon_pid, find_mount  # noqa: E402
from davfed_testfed import TestFederation, TestFedError  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
HELPER = REPO / "bin" / "mount.davfed"
TREE_VERSION = 1
#: Short deadlines so failover is quick (the fault tests use the same).
MOUNT_OPTS = "timeout=2,connect_timeout=1,retries=2"
#: A reader blocked longer than this at the end of the run counts as hung.
HANG_LIMIT = 60.0
#: Failures this soon after an all-down window ended are counted as part of it.
AFTER_ALL_DOWN = 3.0
#: Reads slower than this are listed with the faults in force.
SLOW = 5.0
#: The health timeline is sampled this often; a read's window is widened by it.
HEALTH_SAMPLE = 0.1

# --- deterministic content -----------------------------------------------------------------

#: 2 MiB of fixed pseudo-random bytes; a file's MiB ``k`` is a window of it (no period).
_POOL = b"".join(hashlib.shake_256(f"davfed-soak-pool-{i}".encode()).digest(MiB) for i in range(2))


def chunk_bytes(seed: int, index: int) -> bytes:
    """MiB ``index`` of the file with ``seed``: a 16-byte header (seed, index) + a pool window."""
    key = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    start = int.from_bytes(key, "little") % MiB
    header = seed.to_bytes(8, "little") + index.to_bytes(8, "little")
    return header + _POOL[start + 16 : start + MiB]


def expected(seed: int, offset: int, length: int, size: int) -> bytes:
    """The bytes at ``offset`` (``length``, clipped to ``size``) of the file with ``seed``."""
    end = min(offset + length, size)
    out = bytearray()
    pos = offset
    while pos < end:
        index, within = divmod(pos, MiB)
        take = min(MiB - within, end - pos)
        out += chunk_bytes(seed, index)[within : within + take]
        pos += take
    return bytes(out)


@dataclass(frozen=True, slots=True)
class TreeFile:
    name: str
    size: int
    seed: int


def plan_tree(total: int) -> list[TreeFile]:
    """File names, sizes and seeds adding up to about ``total`` bytes (deterministic)."""
    rng = random.Random(total)
    sizes = [4 * MiB + 12345, 16 * MiB, 64 * MiB - 1, 128 * MiB + 777, 256 * MiB, 512 * MiB + 3]
    files: list[TreeFile] = []
    used = 0
    # a few small files of odd sizes: tails, single blocks, empty
    for i, size in enumerate((0, 1, 4095, 65537, MiB + 1, 3 * MiB + 5)):
        files.append(TreeFile(f"small/s{i:02d}.bin", size, 1000 + i))
        used += size
    i = 0
    while used < total:
        size = min(rng.choice([s for s in sizes if s <= max(total // 8, 4 * MiB + 12345)]), total)
        files.append(TreeFile(f"d{i % 4}/f{i:04d}.bin", size, 2000 + i))
        used += size
        i += 1
    return files


def write_file(path: Path, item: TreeFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for index in range(0, (item.size + MiB - 1) // MiB):
            chunk = chunk_bytes(item.seed, index)
            f.write(chunk[: min(MiB, item.size - index * MiB)])
    tmp.replace(path)


def ensure_tree(root: Path, total: int) -> list[TreeFile]:
    """Generate the tree under ``root`` unless a complete one of this shape is there."""
    files = plan_tree(total)
    manifest = root / "manifest.json"
    wanted = {"version": TREE_VERSION, "files": [[f.name, f.size, f.seed] for f in files]}
    data = root / "data"
    if manifest.is_file():
        try:
            same = json.loads(manifest.read_text()) == wanted
        except ValueError:
            same = False
        if same and all((data / f.name).stat().st_size == f.size for f in files):
            log(f"reusing the tree in {data} ({len(files)} files)")
            return files
    log(f"generating {human(sum(f.size for f in files))} in {data} ({len(files)} files)")
    if data.exists():
        shutil.rmtree(data)
    manifest.unlink(missing_ok=True)
    started = time.monotonic()
    for item in files:
        write_file(data / item.name, item)
    manifest.write_text(json.dumps(wanted))
    log(f"tree written in {time.monotonic() - started:.0f} s")
    return files


# --- readers --------------------------------------------------------------------------------

#: Latency histogram bucket upper bounds, seconds (the last bucket is everything above).
BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Stats:
    """What the readers did; the workers send deltas of this, the parent adds them up."""

    bytes_read: int = 0
    reads: int = 0
    reads_failed: int = 0
    opens_failed: int = 0
    wrong_bytes: int = 0
    wrong_reads: int = 0
    short_reads: int = 0
    premature_eofs: int = 0
    files_whole: int = 0
    random_batches: int = 0
    errnos: Counter[str] = field(default_factory=Counter)
    histogram: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    longest: float = 0.0
    longest_what: str = ""
    #: (start, end, what) of every read or open slower than SLOW
    slow: list[tuple[float, float, str]] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    #: (read start, read end, errno or "short read", what): every failure, for the timeline
    events: list[tuple[float, float, str, str]] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        for name in (
            "bytes_read",
            "reads",
            "reads_failed",
            "opens_failed",
            "wrong_bytes",
            "wrong_reads",
            "short_reads",
            "premature_eofs",
            "files_whole",
            "random_batches",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errnos.update(other.errnos)
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]
        if other.longest > self.longest:
            self.longest, self.longest_what = other.longest, other.longest_what
        self.slow = (self.slow + other.slow)[:2000]
        self.wrong_examples = (self.wrong_examples + other.wrong_examples)[:10]
        self.events = (self.events + other.events)[:5000]

    def timed(self, seconds: float, what: str, wall: float) -> None:
        """Record one read (or open) of ``seconds`` that started at ``wall``."""
        if seconds > SLOW:
            self.slow.append((wall, wall + seconds, what))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.histogram[i] += 1
                break
        else:
            self.histogram[-1] += 1
        if seconds > self.longest:
            self.longest, self.longest_what = seconds, what


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class Reader:
    """One reader process: picks operations until the deadline, checks every byte."""

    def __init__(
        self,
        slot: int,
        mountpoint: Path,
        files: list[TreeFile],
        deadline: float,
        busy: SynchronizedArray[Any],
        results: mp.Queue[tuple[int, Stats | None]],
    ) -> None:
        self.slot = slot
        self.mnt = mountpoint
        self.files = [f for f in files if f.size > 0] + [f for f in files if f.size == 0]
        self.deadline = deadline
        self.busy = busy
        self.results = results
        self.rng = random.Random(slot * 7919 + int(deadline))
        self.stats = Stats()

    def run(self) -> None:
        last_flush = time.monotonic()
        while time.time() < self.deadline:
            item = self.rng.choice(self.files)
            if self.rng.random() < 0.5:
                self.sequential(item)
            else:
                self.random_reads(item)
            if time.monotonic() - last_flush > 1.0:
                self.flush()
                last_flush = time.monotonic()
        self.flush()
        self.results.put((self.slot, None))

    def flush(self) -> None:
        self.results.put((self.slot, self.stats))
        self.stats = Stats()

    def _open(self, item: TreeFile) -> int | None:
        self.busy[self.slot] = wall = time.time()
        started = time.monotonic()
        try:
            return os.open(self.mnt / item.name, os.O_RDONLY)
        except OSError as exc:
            self.stats.opens_failed += 1
            self.stats.errnos[f"open:{errno_name(exc)}"] += 1
            self.stats.events.append((wall, time.time(), f"open:{errno_name(exc)}", item.name))
            return None
        finally:
            self.stats.timed(time.monotonic() - started, f"open {item.name}", wall)
            self.busy[self.slot] = 0.0

    @staticmethod
    def _close(fd: int) -> None:
        """Close, dropping the file's pages first so the next read reaches the daemon."""
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    def _read(self, fd: int, item: TreeFile, offset: int, length: int) -> bool:
        """One pread, timed and checked. False if it failed (errno) or was short."""
        self.busy[self.slot] = wall = time.time()
        started = time.monotonic()
        what = f"{item.name}@{offset}+{length}"
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            self.stats.reads_failed += 1
            self.stats.errnos[errno_name(exc)] += 1
            self.stats.events.append((wall, time.time(), errno_name(exc), what))
            return False
        finally:
            self.stats.timed(time.monotonic() - started, what, wall)
            self.busy[self.slot] = 0.0
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        want = expected(item.seed, offset, length, item.size)
        if data != want:
            common = min(len(data), len(want))
            wrong = sum(1 for a, b in zip(data[:common], want[:common], strict=True) if a != b)
            if len(data) > len(want):
                wrong += len(data) - len(want)  # bytes past EOF are wrong bytes
            if wrong:
                self.stats.wrong_bytes += wrong
                self.stats.wrong_reads += 1
                first = next(
                    (i for i in range(common) if data[i] != want[i]), common
                )  # first differing byte
                self.stats.wrong_examples.append(
                    f"{item.name} offset {offset} length {length}: {wrong} wrong bytes, "
                    f"first at +{first}"
                )
            if len(data) < len(want):
                self.short_read(fd, item, offset, len(data), len(want), wall, what)
                return False
        return True

    def short_read(
        self, fd: int, item: TreeFile, offset: int, got: int, wanted: int, wall: float, what: str
    ) -> None:
        """A read returned fewer bytes than the file has there: read on, as a job would.

        POSIX lets a read return the bytes it had before an error (the next read then
        fails): that is a failed read, not corruption. A next read returning 0 bytes
        is a premature EOF: a job would take the file as truncated (counted apart).
        """
        self.stats.short_reads += 1
        seen = os.fstat(fd).st_size
        try:
            more = os.pread(fd, wanted - got, offset + got)
            outcome = "premature EOF" if not more else f"then {len(more)} bytes"
        except OSError as exc:
            outcome = f"then {errno_name(exc)}"
            more = b""
        if not more and not outcome.startswith("then E"):
            self.stats.premature_eofs += 1
        elif (
            more and more != expected(item.seed, offset + got, wanted - got, item.size)[: len(more)]
        ):
            self.stats.wrong_bytes += 1
            self.stats.wrong_reads += 1
            self.stats.wrong_examples.append(f"{what}: the rest after a short read differs")
        kind = outcome if not more else "then more bytes"
        self.stats.errnos[f"short read, {kind}"] += 1
        self.stats.events.append(
            (
                wall,
                time.time(),
                "short read",
                f"{what}: got {got} of {wanted}, {outcome} (st_size {seen}, real size {item.size})",
            )
        )

    def sequential(self, item: TreeFile) -> None:
        fd = self._open(item)
        if fd is None:
            return
        try:
            offset = 0
            while offset < item.size and time.time() < self.deadline:
                if not self._read(fd, item, offset, MiB):
                    return
                offset += MiB
            # at the end, EOF must read as empty
            if offset >= item.size and self._read(fd, item, item.size, MiB):
                self.stats.files_whole += 1
        finally:
            self._close(fd)

    def random_reads(self, item: TreeFile) -> None:
        fd = self._open(item)
        if fd is None:
            return
        try:
            for _ in range(self.rng.randint(4, 32)):
                if time.time() >= self.deadline:
                    break
                length = self.rng.randint(64 * 1024, MiB)
                offset = self.rng.randrange(0, max(item.size, 1))
                if not self._read(fd, item, offset, length):
                    return
            self.stats.random_batches += 1
        finally:
            self._close(fd)


def reader_main(
    slot: int,
    mountpoint: str,
    files: list[TreeFile],
    deadline: float,
    busy: SynchronizedArray[Any],
    results: mp.Queue[tuple[int, Stats | None]],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when readers stop
    Reader(slot, Path(mountpoint), files, deadline, busy, results).run()


# --- faults ---------------------------------------------------------------------------------


class FaultInjector(threading.Thread):
    """Cycles faults across the endpoints every ``period`` s (±50 %) until stopped.

    Mostly one or two endpoints are faulty at a time; now and then all three are
    down for ``all_down`` seconds. Everything is cleared when it stops.
    """

    KINDS = ("down", "slow", "stall", "cut", "status", "delete", "resize")

    def __init__(
        self, fed: TestFederation, files: list[TreeFile], period: float, seed: int
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.fed = fed
        self.files = [f for f in files if f.size > 0]
        self.period = period
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.applied: Counter[str] = Counter()
        self.errors: list[str] = []
        self.rounds = 0
        self.all_down_windows = 0
        self.all_down_seconds = 0.0
        self.n = len(fed.endpoints)
        #: (wall time, the faults in force from then on)
        self.timeline: list[tuple[float, str]] = [(time.time(), "clear")]
        self._active: list[str] = []

    def _note(self, what: str | None) -> None:
        if what is None:
            self._active = []
        else:
            self._active.append(what)
        self.timeline.append((time.time(), " ".join(self._active) or "clear"))

    def _one(self, index: int) -> str:
        kind = self.rng.choice(self.KINDS)
        params: dict[str, object] = {}
        if kind == "slow":
            params["delay"] = self.rng.choice([0.3, 1.0, 3.0])
        elif kind in ("stall", "cut"):
            params["after"] = self.rng.choice([0, 4096, 65536, MiB, 5 * MiB])
        elif kind == "status":
            params["status"] = self.rng.choice([500, 502, 503, 404])
        elif kind in ("delete", "resize"):
            item = self.rng.choice(self.files)
            params["path"] = item.name
            if kind == "resize":
                params["size"] = self.rng.choice([item.size // 2, item.size + 4096])
        self.fed.fault(index, kind, **params)
        self.applied[kind] += 1
        shown = ",".join(f"{k}={v}" for k, v in params.items() if k != "path")
        label = f"ep{index}:{kind}" + (f"({shown})" if shown else "")
        self._note(label + (" 1 file" if "path" in params else ""))
        return label

    def step(self) -> None:
        self.fed.clear_faults()
        self._note(None)
        roll = self.rng.random()
        if roll < 0.07:  # everything down, briefly
            for i in range(self.n):
                self.fed.fault(i, "down")
            self._note("ALL-DOWN")
            self.applied["all-down"] += 1
            self.all_down_windows += 1
            window = self.rng.uniform(1.0, 2.5)
            self.stop_event.wait(window)
            self.all_down_seconds += window
            self.fed.clear_faults()
            self._note(None)
            return
        count = 1 if roll < 0.6 else 2 if roll < 0.95 else 0
        for index in self.rng.sample(range(self.n), count):
            self._one(index)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
                self.rounds += 1
            except (TestFedError, OSError) as exc:
                self.errors.append(str(exc))
            self.stop_event.wait(self.rng.uniform(self.period * 0.5, self.period * 1.5))
        with contextlib.suppress(TestFedError, OSError):
            self.fed.clear_faults()
        self._note(None)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


# --- the daemon -----------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Monitor(threading.Thread):
    """Watches the daemon once a second: pid changes, the mount, VmHWM, CPU."""

    def __init__(self, mountpoint: Path, pid: int) -> None:
        super().__init__(name="monitor", daemon=True)
        self.mnt = mountpoint
        self.first_pid = pid
        self.pid: int | None = pid
        self.pids = [pid]
        self.restarts = 0
        self.died = False
        self.mount_lost = False
        self.peak_rss = proc_status(pid, "VmHWM") or 0
        self.cpu = cpu_seconds(pid) or 0.0
        self.cpu_start = self.cpu
        self.stop_event = threading.Event()

    def sample(self) -> None:
        pid = daemon_pid(self.mnt)
        if pid is None:
            self.died = True
        elif pid != self.pid:
            self.restarts += 1
            self.pids.append(pid)
        if pid is not None:
            self.pid = pid
            self.peak_rss = max(self.peak_rss, proc_status(pid, "VmHWM") or 0)
            self.cpu = cpu_seconds(pid) or self.cpu
        if find_mount(self.mnt) is None:
            self.mount_lost = True

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.sample()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        self.sample()


# --- the run --------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def unmount(mountpoint: Path) -> None:
    for command in (["umount", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if find_mount(mountpoint) is None:
            return
        subprocess.run(command, capture_output=True, timeout=30, check=False)


def abort_fuse(mountpoint: Path) -> None:
    """Abort the FUSE connection of ``mountpoint`` (frees readers stuck in the kernel)."""
    entry = find_mount(mountpoint)
    if entry is None:
        return
    major, minor = entry.device.split(":")
    dev = int(major) * 256 + int(minor) if int(major) else int(minor)
    with contextlib.suppress(OSError):
        Path(f"/sys/fs/fuse/connections/{dev}/abort").write_text("1")


#: Where the daemon's log of the last run is kept (the run directory itself is removed).
DAEMON_LOG = Path(tempfile.gettempdir()) / "davfed-soak-last-daemon.log"


def mount(
    url: str, mountpoint: Path, cache: Path, cache_size: int, extra: str, log_file: Path
) -> None:
    opts = f"cache_dir={cache},cache_size={cache_size},{MOUNT_OPTS},log_file={log_file}"
    if extra:
        opts += "," + extra
    result = subprocess.run(
        [str(HELPER), url, str(mountpoint), "-o", opts],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mount failed ({result.returncode}): {result.stderr.strip()}")


@dataclass
class Args:
    duration: float
    size: int
    readers: int
    tree: Path
    fault_period: float
    seed: int
    cache_size: int
    davfed_opts: str
    quick: bool


def parse_args(argv: list[str]) -> Args:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description="Fault soak: concurrent readers through a davfed mount while faults "
        "cycle across the test federation's endpoints. Needs root and /dev/fuse.",
        epilog="Exit status: 0 clean; 1 wrong bytes, a dead/restarted daemon, a lost mount, "
        "a hung reader, or a harness error. The last line of stdout is one JSON object.",
    )
    parser.add_argument("--duration", type=float, help="seconds of reading (default 300)")
    parser.add_argument("--size", help="size of the tree (default 10G)")
    parser.add_argument("--quick", action="store_true", help="60 s over a 1 GiB tree")
    parser.add_argument("--readers", type=int, default=32, help="reader processes (32)")
    parser.add_argument("--tree", type=Path, help="where the tree lives (reused if present)")
    parser.add_argument("--fault-period", type=float, default=3.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=6, help="seed of the fault sequence")
    parser.add_argument("--cache-size", help="davfed cache_size (default: 40%% of the tree)")
    parser.add_argument("--davfed-opts", default="", help="extra davfed mount options")
    ns = parser.parse_args(argv)
    duration = ns.duration if ns.duration is not None else (60.0 if ns.quick else 300.0)
    size = parse_size(ns.size) if ns.size else (GiB if ns.quick else 10 * GiB)
    if duration <= 0 or size < 16 * MiB or ns.readers < 1:
        parser.error("--duration must be positive, --size at least 16M, --readers at least 1")
    tree = ns.tree or Path(tempfile.gettempdir()) / f"davfed-soak-tree-{size // MiB}M"
    cache_size = parse_size(ns.cache_size) if ns.cache_size else max(size * 2 // 5, 64 * MiB)
    return Args(
        duration,
        size,
        ns.readers,
        tree,
        ns.fault_period,
        ns.seed,
        cache_size,
        ns.davfed_opts,
        ns.quick,
    )


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C (through ``finally``)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def states_during(timeline: list[tuple[float, str]], start: float, end: float) -> list[str]:
    """The states of ``timeline`` in force at some moment of [start, end], in order."""
    times = [t for t, _ in timeline]
    first = max(bisect.bisect_right(times, start) - 1, 0)
    last = max(bisect.bisect_right(times, end) - 1, 0)
    states: list[str] = []
    for _, state in timeline[first : last + 1]:
        if not states or states[-1] != state:
            states.append(state)
    return states


def outage_ends(faults: list[tuple[float, str]], health: list[tuple[float, str]]) -> list[float]:
    """When each all-down window (a fault, or the checker seeing no endpoint) ended."""
    ends = []
    for timeline, bad in ((faults, "ALL-DOWN"), (health, "none")):
        ends += [
            t
            for (t, state), (_, prev) in zip(timeline[1:], timeline, strict=False)
            if prev == bad and state != bad
        ]
    return sorted(ends)


def classify(
    events: list[tuple[float, float, str, str]],
    faults: list[tuple[float, str]],
    health: list[tuple[float, str]],
    t0: float,
) -> tuple[dict[str, int], list[str]]:
    """Failures grouped by what explains them; a log of them, unexplained ones first.

    A failure is explained if, while the read ran, every endpoint was down (the
    ``ALL-DOWN`` fault) or the federation's checker had no endpoint online (``none``:
    it then answers 404 to every redirect), or if it started within
    :data:`AFTER_ALL_DOWN` s after such a window ended.
    """
    ends = outage_ends(faults, health)
    groups: Counter[str] = Counter()
    lines: list[tuple[bool, str]] = []
    for start, end, kind, what in sorted(events):
        fault_states = states_during(faults, start, end)
        online_states = states_during(health, start, end + HEALTH_SAMPLE * 1.5)
        recent = [start - t for t in ends if 0 <= start - t <= AFTER_ALL_DOWN]
        if "ALL-DOWN" in fault_states:
            why = "all endpoints down"
        elif "none" in online_states:
            why = "the federation saw no endpoint online (checker)"
        elif recent:
            why = f"within {AFTER_ALL_DOWN:.0f} s after all endpoints were down"
        else:
            why = "NOT EXPLAINED by an all-down window"
        explained = not why.startswith("NOT")
        groups[f"{kind}: {why}"] += 1
        detail = f"faults {' -> '.join(fault_states)}; online {' -> '.join(online_states)}"
        if recent:
            detail += f"; {min(recent):.1f} s after an outage"
        line = f"t={start - t0:6.2f}..{end - t0:6.2f} s {kind:<10} {what}: {why} [{detail}]"
        lines.append((explained, line))
    lines.sort(key=lambda item: item[0])  # stable: the unexplained ones first, in time order
    return dict(groups.most_common()), [line for _, line in lines]


class HealthWatch(threading.Thread):
    """Samples the federation's view of its endpoints (the checker's verdicts) every 0.1 s."""

    def __init__(self, fed: TestFederation) -> None:
        super().__init__(name="health", daemon=True)
        self.fed = fed
        self.timeline: list[tuple[float, str]] = [(time.time(), "0,1,2")]
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(HEALTH_SAMPLE):
            try:
                online = self.fed.online()
            except (TestFedError, OSError):
                continue
            state = ",".join(str(i) for i, up in enumerate(online) if up) or "none"
            if state != self.timeline[-1][1]:
                self.timeline.append((time.time(), state))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def collect(
    results: mp.Queue[tuple[int, Stats | None]], total: Stats, finished: set[int], wait: float
) -> None:
    """Add up what the readers sent within ``wait`` seconds."""
    end = time.monotonic() + wait
    while True:
        timeout = end - time.monotonic()
        if timeout <= 0:
            return
        try:
            slot, stats = results.get(timeout=min(timeout, 0.5))
        except queue.Empty:
            continue
        if stats is None:
            finished.add(slot)
        else:
            total.add(stats)


def run(args: Args) -> dict[str, Any]:
    files = ensure_tree(args.tree, args.size)
    tree_bytes = sum(f.size for f in files)
    work = Path(tempfile.mkdtemp(prefix="davfed-soak-run-"))
    mnt = work / "mnt"
    cache = work / "cache"
    mnt.mkdir()
    report: dict[str, Any] = {
        "ok": False,
        "duration_s": args.duration,
        "tree_bytes": tree_bytes,
        "tree_files": len(files),
        "readers": args.readers,
        "cache_size": args.cache_size,
        "mount_options": f"cache_size={args.cache_size},{MOUNT_OPTS}"
        + (f",{args.davfed_opts}" if args.davfed_opts else ""),
    }
    ctx = mp.get_context("spawn")
    procs: list[mp.process.BaseProcess] = []
    fed: TestFederation | None = None
    injector: FaultInjector | None = None
    watch: HealthWatch | None = None
    monitor: Monitor | None = None
    total = Stats()
    try:
        fed = TestFederation(args.tree / "data", endpoints=3, health_period=0.2, max_latency=0.5)
        fed.start()
        log(f"federation at {fed.url}")
        mount(fed.url, mnt, cache, args.cache_size, args.davfed_opts, work / "davfed.log")
        pid = daemon_pid(mnt)
        if pid is None:
            raise RuntimeError("mounted, but no daemon with --ready-fd and the mountpoint")
        log(f"mounted on {mnt}, daemon pid {pid}")
        monitor = Monitor(mnt, pid)
        monitor.start()
        busy: SynchronizedArray[Any] = ctx.Array("d", args.readers)
        results: mp.Queue[tuple[int, Stats | None]] = ctx.Queue()
        start_wall = time.time()
        deadline = start_wall + args.duration
        for slot in range(args.readers):
            proc = ctx.Process(
                target=reader_main,
                args=(slot, str(mnt), files, deadline, busy, results),
                name=f"reader{slot}",
            )
            proc.start()
            procs.append(proc)
        injector = FaultInjector(fed, files, args.fault_period, args.seed)
        injector.start()
        watch = HealthWatch(fed)
        watch.start()
        finished: set[int] = set()
        next_note = time.monotonic() + 15
        while time.time() < deadline:
            collect(results, total, finished, min(1.0, max(deadline - time.time(), 0.01)))
            if time.monotonic() >= next_note:
                next_note += 15
                log(
                    f"{time.time() - start_wall:4.0f} s: {human(total.bytes_read)} read, "
                    f"{total.reads} reads, {total.reads_failed} failed, "
                    f"{total.wrong_bytes} wrong bytes, faults {dict(injector.applied)}"
                )
        injector.stop()
        watch.stop()
        log("reading time is up; faults cleared, waiting for the readers")
        # A reader finishes its current read; one blocked past HANG_LIMIT is hung.
        while len(finished) < args.readers and time.time() < deadline + HANG_LIMIT:
            collect(results, total, finished, 0.5)
        now = time.time()
        hung = [i for i in range(args.readers) if i not in finished]
        stuck = [now - busy[i] for i in hung if busy[i]]
        report["hung_readers"] = len(hung)
        if stuck:
            total.timed(max(stuck), "a read still blocked when the run ended", now - max(stuck))
        # after the faults: the mount must still serve correct bytes
        for name in ("d0/f0000.bin", "small/s05.bin"):
            item = next((f for f in files if f.name == name), None)
            if item is not None:
                with open(mnt / item.name, "rb") as f:
                    head = f.read(MiB)
                if head != expected(item.seed, 0, MiB, item.size):
                    total.wrong_bytes += 1
                    total.wrong_examples.append(f"post-soak read of {name} differs")
        monitor.stop()
        groups, failure_log = classify(total.events, injector.timeline, watch.timeline, start_wall)
        slow_log = [
            f"t={a - start_wall:6.2f}..{b - start_wall:6.2f} s {what} [faults "
            f"{' -> '.join(states_during(injector.timeline, a, b))}; online "
            f"{' -> '.join(states_during(watch.timeline, a, b))}]"
            for a, b, what in sorted(total.slow, key=lambda x: x[0] - x[1])  # longest first
        ]
        report.update(
            {
                "slow_reads": slow_log[:200],
                "failures_by_cause": groups,
                "failure_log": failure_log[:200],
                "fault_timeline": [
                    f"t={t - start_wall:6.2f} s {state}" for t, state in injector.timeline
                ][:400],
                "online_timeline": [
                    f"t={t - start_wall:6.2f} s online {state}" for t, state in watch.timeline
                ][:400],
                "fault_rounds": injector.rounds,
                "faults_applied": dict(injector.applied),
                "all_down_windows": injector.all_down_windows,
                "all_down_seconds": round(injector.all_down_seconds, 1),
                "fault_errors": injector.errors[:5],
            }
        )
    except KeyboardInterrupt as exc:
        report["error"] = f"interrupted ({exc or 'SIGINT'})"
        log(report["error"])
    except (RuntimeError, OSError, TestFedError, subprocess.TimeoutExpired) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        log(report["error"])
    finally:
        if injector is not None and injector.is_alive():
            injector.stop()
        if watch is not None and watch.is_alive():
            watch.stop()
        for child in procs:
            if child.is_alive():
                child.kill()
        for child in procs:
            child.join(timeout=5)
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        if any(p.is_alive() for p in procs):
            abort_fuse(mnt)  # readers stuck in the kernel
            for child in procs:
                child.join(timeout=5)
        daemon = daemon_pid(mnt)
        if find_mount(mnt) is not None:
            unmount(mnt)
        if daemon is not None:
            for _ in range(50):
                if not Path(f"/proc/{daemon}").exists():
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon, signal.SIGKILL)
        if fed is not None:
            with contextlib.suppress(TestFedError, OSError):
                fed.clear_faults()
            fed.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(work / "davfed.log", DAEMON_LOG)
            report["daemon_log"] = str(DAEMON_LOG)
        if find_mount(mnt) is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            report["cleanup_error"] = f"{mnt} is still mounted"
    elapsed = args.duration
    report.update(
        {
            "bytes_read": total.bytes_read,
            "throughput_mib_s": round(total.bytes_read / MiB / elapsed, 1),
            "reads": total.reads,
            "reads_failed": total.reads_failed,
            "opens_failed": total.opens_failed,
            "short_reads": total.short_reads,
            "premature_eofs": total.premature_eofs,
            "errnos": dict(total.errnos.most_common()),
            "wrong_bytes": total.wrong_bytes,
            "wrong_reads": total.wrong_reads,
            "wrong_examples": total.wrong_examples,
            "files_read_whole": total.files_whole,
            "random_batches": total.random_batches,
            "longest_stall_s": round(total.longest, 3),
            "longest_stall_what": total.longest_what,
            "latency_histogram": {
                **{f"<={b}s": n for b, n in zip(BUCKETS, total.histogram, strict=False)},
                f">{BUCKETS[-1]}s": total.histogram[-1],
            },
        }
    )
    if monitor is not None:
        report.update(
            {
                "daemon_pid": monitor.first_pid,
                "daemon_pids_seen": monitor.pids,
                "daemon_restarts": monitor.restarts,
                "daemon_died": monitor.died,
                "mount_lost": monitor.mount_lost,
                "daemon_peak_rss_bytes": monitor.peak_rss,
                "daemon_cpu_s": round(monitor.cpu - monitor.cpu_start, 1),
            }
        )
    report["ok"] = (
        "error" not in report
        and "cleanup_error" not in report
        and report.get("wrong_bytes", 1) == 0
        and report.get("premature_eofs", 1) == 0
        and report.get("daemon_restarts", 1) == 0
        and not report.get("daemon_died", True)
        and not report.get("mount_lost", True)
        and report.get("hung_readers", 1) == 0
    )
    return report


def summary(r: dict[str, Any]) -> str:
    lines = [
        "davfed fault soak (issue 6)",
        f"  tree                {human(r['tree_bytes'])} in {r['tree_files']} files; "
        f"cache_size {human(r['cache_size'])}; {r['readers']} readers; {r['duration_s']:.0f} s",
        f"  bytes read          {human(r['bytes_read'])} ({r['throughput_mib_s']} MiB/s)",
        f"  reads done          {r['reads']} ({r['files_read_whole']} whole files, "
        f"{r['random_batches']} random batches)",
        f"  reads failed        {r['reads_failed']} (+ {r['opens_failed']} failed opens, "
        f"{r['short_reads']} short reads, {r['premature_eofs']} of them premature EOFs)",
        f"  errnos              {r['errnos'] or 'none'}",
        f"  WRONG BYTES         {r['wrong_bytes']}",
        f"  longest stall       {r['longest_stall_s']} s ({r['longest_stall_what']})",
        f"  latency histogram   {r['latency_histogram']}",
        f"  hung readers        {r.get('hung_readers', '?')}",
    ]
    if "daemon_pid" in r:
        lines += [
            f"  daemon restarts     {r['daemon_restarts']} (pids {r['daemon_pids_seen']}; "
            f"died: {r['daemon_died']}, mount lost: {r['mount_lost']})",
            f"  daemon peak RSS     {human(r['daemon_peak_rss_bytes'])} (VmHWM)",
            f"  daemon CPU          {r['daemon_cpu_s']} s",
        ]
    if r.get("failures_by_cause"):
        lines.append("  failures by cause:")
        lines += [f"    {n:5d}  {cause}" for cause, n in r["failures_by_cause"].items()]
        unexplained = [line for line in r["failure_log"] if "NOT EXPLAINED" in line]
        lines += [f"    unexplained: {line}" for line in unexplained[:10]]
    if r.get("slow_reads"):
        lines.append(f"  reads slower than {SLOW:.0f} s: {len(r['slow_reads'])}; the slowest:")
        lines += [f"    {line}" for line in r["slow_reads"][:5]]
    if "faults_applied" in r:
        lines.append(
            f"  faults              {r['fault_rounds']} rounds: {r['faults_applied']}; "
            f"all down {r['all_down_windows']}x, {r['all_down_seconds']} s in total"
        )
    for key in ("error", "cleanup_error"):
        if key in r:
            lines.append(f"  {key:<19} {r[key]}")
    for example in r.get("wrong_examples", []):
        lines.append(f"  wrong: {example}")
    lines.append(f"  result              {'OK' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench/soak: needs root and /dev/fuse", file=sys.stderr)
        return 1
    with interrupts():
        report = run(args)
    print(summary(report))
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
