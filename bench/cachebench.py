#!/usr/bin/env python3
"""The benchmark of issue 5: davfed's block cache against curl, the disk and rclone.

Run it as ``bench/run`` from the repository root (root and ``/dev/fuse`` needed).
Progress goes to stderr; stdout gets a table and, as its last line, one JSON object
with every figure. Everything it creates (the data in /tmp, mounts, network
namespaces, federations, rclone) is removed in ``finally``, also on Ctrl-C and
SIGTERM. See ``bench/README.md`` for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from davfed_fuse.system.mounttable import daemon_pid, find_mount  # noqa: E402
from davfed_testfed import TestFederation  # noqa: E402

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

TARGETS = {
    "loopback_cold_vs_curl": ">= 0.9",
    "wan_cold_vs_curl": ">= 2.0",
    "wan_random_reads_per_s": ">= 15",
    "wan_ttfb_first_ms": "<= 3 RTT + 10 ms",
    "wan_ttfb_later_ms": "<= 2 RTT + 10 ms",
    "warm_vs_disk": ">= 0.6",
    "readers16_fetch_ratio": "<= 1.05",
    "rss_5g_peak_mb": "< 300",
    "ahead_of_rclone": "every row",
}

_quiet = False


def say(message: str) -> None:
    """A progress line on stderr."""
    if not _quiet:
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


def _on_signal(signum: int, _frame: object) -> NoReturn:
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


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a live process, in seconds (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    cpu0 = proc_cpu(pid)
    t0 = time.perf_counter()
    nbytes = work()
    seconds = time.perf_counter() - t0
    cpu = proc_cpu(pid) - cpu0
    row: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "bytes": nbytes,
        "mb_s": round(nbytes / seconds / 1e6, 1),
    }
    if pid is not None:
        row["cpu_s"] = round(cpu, 3)
        row["cpu_s_per_gib"] = round(cpu / (nbytes / GiB), 3) if nbytes else None
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


# --- the pieces under test -----------------------------------------------------------------


class Workspace:
    """The temporary tree of one run: data, mountpoints, cache dirs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="davfed-bench-", dir="/tmp"))
        CLEANUP.push("temporary files", lambda: shutil.rmtree(self.root, ignore_errors=True))
        self.data = self.root / "data"
        self.data.mkdir()
        self._n = 0

    def fresh(self, what: str) -> Path:
        self._n += 1
        path = self.root / f"{what}{self._n}"
        path.mkdir()
        return path


def write_random(path: Path, size: int) -> str:
    """A file of random bytes; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


#: A counter of the bytes the storage endpoints have sent so far.
Fetched = Callable[[], int]


class Mount(Protocol):
    """What the rows need of a mounted filesystem (davfed's or rclone's)."""

    mnt: Path
    pid: int | None

    def close(self) -> None: ...


class DavfedMount:
    """``bin/mount.davfed`` with a fresh cache dir, optionally in a client namespace."""

    def __init__(
        self, ws: Workspace, url: str, netns: str | None = None, extra_opts: str = ""
    ) -> None:
        self.mnt = ws.fresh("mnt")
        self.cache_dir = ws.fresh("cache")
        opts = f"cache_dir={self.cache_dir}" + (f",{extra_opts}" if extra_opts else "")
        self.pid: int | None = None
        # registered first: an interrupt during the helper may still leave a daemon mounting
        self._key = CLEANUP.push(f"davfed mount {self.mnt}", self._umount)
        run(in_netns(netns, [str(MOUNT_HELPER), url, str(self.mnt), "-o", opts]), timeout=120)
        self.pid = daemon_pid(self.mnt)
        if self.pid is None:
            say(f"warning: no daemon process found for {self.mnt}; no CPU/RSS figures")

    def _umount(self) -> None:
        pid = self.pid or daemon_pid(self.mnt)
        alive = lambda: pid is not None and Path(f"/proc/{pid}").exists()  # noqa: E731
        deadline = time.monotonic() + 10
        while alive() and not mounted(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)  # a daemon still starting up: let it mount, then unmount it
        if mounted(self.mnt):
            run([str(DAVFED), "umount", str(self.mnt)], check=False, timeout=60)
        if mounted(self.mnt):
            run(["umount", "-l", str(self.mnt)], check=False, timeout=30)
        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid is not None and alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        CLEANUP.release(self._key)

    def block_files(self) -> list[Path]:
        """Block files of the (single) file read through this mount, in block order."""
        dirs = {p.parent for p in self.cache_dir.glob("*/v1/*/*/*") if p.name.isdigit()}
        if len(dirs) != 1:
            raise BenchError(f"expected the blocks of one file in {self.cache_dir}, got {dirs}")
        files = [p for p in dirs.pop().iterdir() if p.name.isdigit()]
        return sorted(files, key=lambda p: int(p.name))


class RcloneMount:
    """``rclone mount`` of a webdav remote (one nginx endpoint), full VFS cache."""

    def __init__(
        self, ws: Workspace, base_url: str, netns: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.mnt = ws.fresh("rmnt")
        cache_dir = ws.fresh("rcache")
        conf = cache_dir / "rclone.conf"
        conf.write_text(f"[bench]\ntype = webdav\nurl = {base_url}\nvendor = other\n")
        cmd = [
            "rclone", "mount", "bench:", str(self.mnt),
            "--config", str(conf),
            "--cache-dir", str(cache_dir / "cache"),
            "--vfs-cache-mode", "full",
            "--read-only",
            "--dir-cache-time", "1h",
            "--log-file", str(cache_dir / "rclone.log"),
            *(extra or []),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._key = CLEANUP.push(f"rclone mount {self.mnt}", self._umount)
        self.proc = subprocess.Popen(
            in_netns(netns, cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_mounted(self.mnt, self.proc, 30)
        self.pid: int | None = self.proc.pid  # nsenter execs rclone (no fork without --pid)

    def _umount(self) -> None:
        if mounted(self.mnt):
            run(["fusermount3", "-u", str(self.mnt)], check=False, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if mounted(self.mnt):
            run(["umount", "-l", str(self.mnt)], check=False, timeout=30)

    def close(self) -> None:
        CLEANUP.release(self._key)


def rclone_chunk_streams_supported() -> bool:
    proc = run(["rclone", "mount", "--help"], check=False, timeout=30)
    return "--vfs-read-chunk-streams" in proc.stdout


def rclone_version() -> str | None:
    if shutil.which("rclone") is None:
        return None
    out = run(["rclone", "version"], check=False, timeout=30).stdout
    return out.splitlines()[0] if out else None


class WanLink:
    """Client and server namespaces joined by a veth pair: 50 ms RTT, 1 Gbit/s."""

    def __init__(self) -> None:
        self.name = f"dfb{os.getpid() % 100000}"
        self.cli = f"{self.name}-cli"
        self.srv = f"{self.name}-srv"
        self.method = "netem" if netem_available() else "nfqdelay"
        if self.method == "netem":
            self._key = CLEANUP.push("netem namespaces", self._down_netem)
            self._up_netem()
        else:
            self._key = CLEANUP.push("wan namespaces", self._down_tool)
            run([str(WAN_TOOL / "up"), self.name, str(WAN_DELAY_MS), WAN_RATE], timeout=300)

    def _up_netem(self) -> None:
        c, s = f"{self.name[:8]}c0", f"{self.name[:8]}s0"
        run(["ip", "netns", "add", self.cli])
        run(["ip", "netns", "add", self.srv])
        run(["ip", "link", "add", c, "netns", self.cli, "type", "veth", "peer", "name", s,
             "netns", self.srv])  # fmt: skip
        run(["ip", "-n", self.cli, "addr", "add", f"{CLIENT_ADDR}/30", "dev", c])
        run(["ip", "-n", self.srv, "addr", "add", f"{SERVER_ADDR}/30", "dev", s])
        for ns, dev in ((self.cli, c), (self.srv, s)):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem",
                 "delay", f"{WAN_DELAY_MS}ms", "rate", WAN_RATE, "limit", "100000"])  # fmt: skip

    def _down_netem(self) -> None:
        run(["ip", "netns", "del", self.cli], check=False)
        run(["ip", "netns", "del", self.srv], check=False)

    def _down_tool(self) -> None:
        run([str(WAN_TOOL / "down"), self.name], check=False)

    def close(self) -> None:
        CLEANUP.release(self._key)


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (tried in a scratch namespace)."""
    ns = f"dfbprobe{os.getpid() % 100000}"
    if run(["ip", "netns", "add", ns], check=False).returncode != 0:
        return False
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"], check=False)
        probe = ["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        return run(probe, check=False).returncode == 0
    finally:
        run(["ip", "netns", "del", ns], check=False)


class NetnsFederation:
    """``davfed testfed --host 169.254.77.2`` started inside the server namespace."""

    def __init__(self, data: Path, netns: str) -> None:
        cmd = in_netns(
            netns,
            [
                sys.executable, "-m", "davfed_testfed", str(data),
                "--port", "0", "--host", SERVER_ADDR, "--endpoints", "3",
                "--ready-json", "--watch-stdin",
            ],
        )  # fmt: skip
        self._key = CLEANUP.push("federation in the server namespace", self._stop)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise BenchError(f"federation in {netns} did not start: {err.strip()[-300:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]
        self.endpoints: list[dict[str, Any]] = self.info["endpoints"]
        self.access_logs = [Path(e["access_log"]) for e in self.endpoints]

    def replica_url(self, relpath: str, index: int = 0) -> str:
        return str(self.endpoints[index]["base_url"]) + relpath

    def bytes_sent(self) -> int:
        return log_bytes(self.access_logs)

    def _stop(self) -> None:
        if getattr(self, "proc", None) is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        CLEANUP.release(self._key)


def curl(url: str, netns: str | None = None) -> dict[str, Any]:
    fmt = "%{size_download} %{time_connect} %{time_starttransfer} %{time_total}"
    cmd = in_netns(netns, ["curl", "-sS", "-f", "-o", "/dev/null", "-w", fmt, url])
    t0 = time.perf_counter()
    out = run(cmd, timeout=1800).stdout.split()
    seconds = time.perf_counter() - t0
    nbytes = int(out[0])
    return {
        "seconds": round(seconds, 4),
        "bytes": nbytes,
        "mb_s": round(nbytes / seconds / 1e6, 1),
        "connect_ms": round(float(out[1]) * 1000, 1),
        "ttfb_ms": round(float(out[2]) * 1000, 1),
    }


# --- the stages ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size: int = args.size
        self.results: dict[str, Any] = {
            "bench": "davfed-cachebench",
            "ok": False,
            "file_size": self.size,
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "loopback": {},
            "notes": [],
        }
        self.ws = Workspace()
        self.big = self.ws.data / "big.bin"
        self.sha = ""

    def note(self, text: str) -> None:
        self.results["notes"].append(text)
        say(f"note: {text}")

    def prepare_data(self) -> None:
        say(f"writing {human(self.size)} of random data to {self.big}")
        self.sha = write_random(self.big, self.size)
        for name in ("ttfb_a.bin", "ttfb_b.bin"):
            write_random(self.ws.data / name, 8 * MiB)
        if self.args.rss_set:
            # 5 names of the 1 GiB file (hard links: 5 URLs, 5 cache entries, 1 GiB of /tmp)
            (self.ws.data / "set").mkdir()
            for i in range(5):
                os.link(self.big, self.ws.data / "set" / f"input{i}.bin")

    def warm_ttfb_files(self) -> None:
        read_paths([self.ws.data / "ttfb_a.bin", self.ws.data / "ttfb_b.bin"])

    def cold_prep(self) -> None:
        drop_caches()
        warm_source(self.big)

    # -- loopback --

    def loopback(self) -> None:
        res = self.results["loopback"]
        say("starting the test federation (3 nginx endpoints) on loopback")
        fed = TestFederation(self.ws.data, endpoints=3, health_period=1.0, max_latency=2.0)
        fed.start()
        key = CLEANUP.push("loopback federation", fed.stop)
        fetched = lambda: sum(fed.bytes_sent(i) for i in range(len(fed.endpoints)))  # noqa: E731
        replica = fed.replica_url("big.bin", 0)
        size = self.size

        self.cold_prep()
        say("loopback: curl -o /dev/null of the replica URL")
        res["curl"] = curl(replica)

        m = DavfedMount(self.ws, fed.url, extra_opts=self.args.davfed_opts)
        self.sequential_rows("davfed", m, fetched)
        blocks = m.block_files()
        block_bytes = sum(p.stat().st_size for p in blocks)
        if block_bytes != size:
            self.note(f"block files hold {block_bytes} bytes, the file has {size}")
        say(f"loopback: reading the {len(blocks)} block files directly (page cache dropped)")
        drop_caches()
        res["disk_blocks"] = measure(None, lambda: read_paths(blocks))
        res["disk_blocks"]["files"] = len(blocks)
        res["davfed_seq_rss_peak_mb"] = proc_hwm_mb(m.pid)
        m.close()

        def open_davfed() -> Mount:
            return DavfedMount(self.ws, fed.url, extra_opts=self.args.davfed_opts)

        self.random_rows("davfed", open_davfed, fetched)
        self.readers_row("davfed", open_davfed, fetched)

        if self.args.rclone:
            self.loopback_rclone(fed.endpoints[0].base_url, fed.bytes_sent)
        if self.args.rss_set:
            self.rss_set(fed.url, fetched)
        CLEANUP.release(key)

    def loopback_rclone(self, base_url: str, ep_bytes: Callable[[int], int]) -> None:
        fetched = lambda: ep_bytes(0)  # noqa: E731
        r = RcloneMount(self.ws, base_url)
        self.sequential_rows("rclone", r, fetched)
        r.close()

        def open_rclone() -> Mount:
            return RcloneMount(self.ws, base_url)

        self.random_rows("rclone", open_rclone, fetched)
        self.readers_row("rclone", open_rclone, fetched)

    def sequential_rows(self, name: str, m: Mount, fetched: Fetched) -> None:
        """The big file read through ``m``: cold, warm (page cache dropped), warm (kept)."""
        res = self.results["loopback"]
        say(f"loopback: {name} cold sequential read")
        path = m.mnt / "big.bin"
        os.listdir(m.mnt)
        path.stat()
        self.cold_prep()
        before = fetched()
        res[f"{name}_cold"] = measure(m.pid, lambda: read_paths([path]))
        res[f"{name}_cold"]["fetch_ratio"] = round((settled(fetched) - before) / self.size, 3)
        check_sample(path, self.big, self.size)
        say(f"loopback: {name} warm read (page cache dropped)")
        drop_caches()
        res[f"{name}_warm"] = measure(m.pid, lambda: read_paths([path]))
        say(f"loopback: {name} warm read (page cache kept)")
        res[f"{name}_warm_pagecache"] = measure(m.pid, lambda: read_paths([path]))

    def random_rows(self, name: str, open_mount: Callable[[], Mount], fetched: Fetched) -> None:
        """Random 64 KiB reads of the big file through a fresh mount: cold, then warm."""
        res = self.results["loopback"]
        n = self.args.random_reads
        say(f"loopback: {name} {n} random 64 KiB reads, cold then warm")
        m = open_mount()
        path = m.mnt / "big.bin"
        path.stat()
        self.cold_prep()
        before = fetched()
        cpu0 = proc_cpu(m.pid)
        cold = random_reads(path, self.big, self.size, n, seed=1)
        cold["cpu_s"] = round(proc_cpu(m.pid) - cpu0, 3)
        cold["bytes_fetched"] = settled(fetched) - before
        res[f"{name}_random_cold"] = cold
        drop_caches()
        cpu0 = proc_cpu(m.pid)
        warm = random_reads(path, self.big, self.size, n, seed=1)
        warm["cpu_s"] = round(proc_cpu(m.pid) - cpu0, 3)
        res[f"{name}_random_warm"] = warm
        m.close()

    def readers_row(self, name: str, open_mount: Callable[[], Mount], fetched: Fetched) -> None:
        """``--readers`` processes reading the same cold file through a fresh mount."""
        readers = self.args.readers
        say(f"loopback: {name}, {readers} processes reading the same cold file")
        m = open_mount()
        path = m.mnt / "big.bin"
        path.stat()
        self.cold_prep()
        before = fetched()
        cpu0 = proc_cpu(m.pid)
        row = parallel_readers(path, readers, self.sha)
        row["cpu_s"] = round(proc_cpu(m.pid) - cpu0, 3)
        row["bytes_fetched"] = settled(fetched) - before
        row["fetch_ratio"] = round(row["bytes_fetched"] / self.size, 3)
        row["rss_peak_mb"] = proc_hwm_mb(m.pid)
        self.results["loopback"][f"{name}_readers"] = row
        if not row["all_correct"]:
            self.note(f"{row['wrong_readers']} of {readers} {name} readers got wrong bytes")
        m.close()

    def rss_set(self, url: str, fetched: Callable[[], int]) -> None:
        say("loopback: davfed peak RSS while 5 processes read a 5-file input set")
        m = DavfedMount(self.ws, url, extra_opts=self.args.davfed_opts)
        paths = [m.mnt / "set" / f"input{i}.bin" for i in range(5)]
        for p in paths:
            p.stat()
        self.cold_prep()
        before = fetched()
        totals: list[int] = []

        def work() -> int:
            threads = [
                threading.Thread(target=lambda p=p: totals.append(read_paths([p]))) for p in paths
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(totals)

        row = measure(m.pid, work)
        row["files"] = len(paths)
        row["bytes_fetched"] = settled(fetched) - before
        self.results["rss_5g"] = row
        if row["bytes"] != 5 * self.size:
            self.note(f"input set: read {row['bytes']} bytes, expected {5 * self.size}")
        m.close()

    # -- WAN --

    def wan(self) -> None:
        res: dict[str, Any] = {"rtt_nominal_ms": 2 * WAN_DELAY_MS, "rate": WAN_RATE}
        self.results["wan"] = res
        say(f"WAN: setting up namespaces ({2 * WAN_DELAY_MS} ms RTT, {WAN_RATE})")
        link = WanLink()
        res["method"] = link.method
        fed = NetnsFederation(self.ws.data, link.srv)
        size = self.size

        self.cold_prep()
        say("WAN: curl -o /dev/null of the replica URL over the link")
        res["curl"] = curl(fed.replica_url("big.bin"), link.cli)
        res["rtt_measured_ms"] = res["curl"]["connect_ms"]
        say("WAN: what a bare HTTP client gets over the link (bench/linkprobe.py)")
        offsets = random_offsets(size, self.args.wan_random_reads, seed=2)
        probe = [
            sys.executable, str(REPO / "bench" / "linkprobe.py"), "--federation", fed.url,
            "--big", "big.bin", "--size", str(size), "--first", "ttfb_a.bin",
            "--later", "ttfb_b.bin", "--offsets", ",".join(map(str, offsets)),
        ]  # fmt: skip
        res["bare_http"] = json.loads(run(in_netns(link.cli, probe), timeout=600).stdout)

        say("WAN: davfed time to first byte, then cold sequential read")
        m = DavfedMount(self.ws, fed.url, netns=link.cli, extra_opts=self.args.davfed_opts)
        os.listdir(m.mnt)
        for name in ("ttfb_a.bin", "ttfb_b.bin", "big.bin"):
            (m.mnt / name).stat()
        self.warm_ttfb_files()
        res["davfed_ttfb_first_ms"] = ttfb_ms(m.mnt / "ttfb_a.bin")
        res["davfed_ttfb_later_ms"] = ttfb_ms(m.mnt / "ttfb_b.bin")
        time.sleep(0.5)  # what davfed asked the endpoints for, for the record
        res["davfed_ttfb_requests"] = log_requests(fed.access_logs, "/ttfb_")
        self.cold_prep()
        before = fed.bytes_sent()
        path = m.mnt / "big.bin"
        res["davfed_cold"] = measure(m.pid, lambda: read_paths([path]))
        res["davfed_cold"]["fetch_ratio"] = round((settled(fed.bytes_sent) - before) / size, 3)
        check_sample(path, self.big, size)
        m.close()

        n = self.args.wan_random_reads
        say(f"WAN: davfed {n} cold random 64 KiB reads")
        m = DavfedMount(self.ws, fed.url, netns=link.cli, extra_opts=self.args.davfed_opts)
        (m.mnt / "big.bin").stat()
        self.cold_prep()
        res["davfed_random_cold"] = random_reads(m.mnt / "big.bin", self.big, size, n, seed=2)
        m.close()

        if self.args.rclone:
            extra: list[str] = []
            if rclone_chunk_streams_supported():
                extra = ["--vfs-read-chunk-streams", "8"]
            else:
                self.note(
                    f"{self.results['rclone']} has no --vfs-read-chunk-streams: the WAN rclone "
                    "rows read with one stream (rclone's defaults), not the 8 chunk streams "
                    "of the issue's 87 MB/s figure"
                )
            res["rclone_extra_args"] = extra
            base = str(fed.endpoints[0]["base_url"])
            say("WAN: rclone time to first byte, then cold sequential read")
            r = RcloneMount(self.ws, base, netns=link.cli, extra=extra)
            os.listdir(r.mnt)
            for name in ("ttfb_a.bin", "ttfb_b.bin", "big.bin"):
                (r.mnt / name).stat()
            self.warm_ttfb_files()
            res["rclone_ttfb_first_ms"] = ttfb_ms(r.mnt / "ttfb_a.bin")
            res["rclone_ttfb_later_ms"] = ttfb_ms(r.mnt / "ttfb_b.bin")
            self.cold_prep()
            path = r.mnt / "big.bin"
            res["rclone_cold"] = measure(r.pid, lambda: read_paths([path]))
            check_sample(path, self.big, size)
            r.close()
            say(f"WAN: rclone {n} cold random 64 KiB reads")
            r = RcloneMount(self.ws, base, netns=link.cli, extra=extra)
            (r.mnt / "big.bin").stat()
            self.cold_prep()
            res["rclone_random_cold"] = random_reads(r.mnt / "big.bin", self.big, size, n, seed=2)
            r.close()
        fed.close()
        link.close()

    # -- summary --

    def summarize(self) -> None:
        r = self.results
        lb: dict[str, Any] = r["loopback"]
        wan: dict[str, Any] = r.get("wan", {})

        def get(d: dict[str, Any], row: str, key: str) -> float | None:
            value = d.get(row, {}).get(key) if isinstance(d.get(row), dict) else d.get(row)
            return None if value is None else float(value)

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or b == 0 else round(a / b, 3)

        ratios = {
            "loopback_cold_vs_curl": ratio(get(lb, "davfed_cold", "mb_s"), get(lb, "curl", "mb_s")),
            "warm_vs_disk": ratio(get(lb, "davfed_warm", "mb_s"), get(lb, "disk_blocks", "mb_s")),
            "warm_pagecache_vs_disk": ratio(
                get(lb, "davfed_warm_pagecache", "mb_s"), get(lb, "disk_blocks", "mb_s")
            ),
            "wan_cold_vs_curl": ratio(get(wan, "davfed_cold", "mb_s"), get(wan, "curl", "mb_s")),
            "wan_rclone_cold_vs_curl": ratio(
                get(wan, "rclone_cold", "mb_s"), get(wan, "curl", "mb_s")
            ),
        }
        vs_rclone = {
            "loopback_cold": ratio(get(lb, "davfed_cold", "mb_s"), get(lb, "rclone_cold", "mb_s")),
            "loopback_warm": ratio(get(lb, "davfed_warm", "mb_s"), get(lb, "rclone_warm", "mb_s")),
            "loopback_warm_pagecache": ratio(
                get(lb, "davfed_warm_pagecache", "mb_s"), get(lb, "rclone_warm_pagecache", "mb_s")
            ),
            "loopback_random_cold": ratio(
                get(lb, "davfed_random_cold", "reads_per_s"),
                get(lb, "rclone_random_cold", "reads_per_s"),
            ),
            "loopback_random_warm": ratio(
                get(lb, "davfed_random_warm", "reads_per_s"),
                get(lb, "rclone_random_warm", "reads_per_s"),
            ),
            "loopback_readers": ratio(
                get(lb, "rclone_readers", "seconds"), get(lb, "davfed_readers", "seconds")
            ),
            "wan_cold": ratio(get(wan, "davfed_cold", "mb_s"), get(wan, "rclone_cold", "mb_s")),
            "wan_ttfb_first": ratio(
                get(wan, "rclone_ttfb_first_ms", ""), get(wan, "davfed_ttfb_first_ms", "")
            ),
            "wan_ttfb_later": ratio(
                get(wan, "rclone_ttfb_later_ms", ""), get(wan, "davfed_ttfb_later_ms", "")
            ),
            "wan_random_cold": ratio(
                get(wan, "davfed_random_cold", "reads_per_s"),
                get(wan, "rclone_random_cold", "reads_per_s"),
            ),
        }
        ratios["davfed_vs_rclone"] = {k: v for k, v in vs_rclone.items() if v is not None}
        # Against a bare HTTP client on the same link (bench/linkprobe.py): 1.0 means
        # davfed gets what the link gives (above 1: faster, for latencies: lower).
        bare = wan.get("bare_http", {})
        vs_bare = {
            "wan_cold_vs_parallel_gets": ratio(
                get(wan, "davfed_cold", "mb_s"), get(bare, "parallel_mb_s", "")
            ),
            "wan_random_cold": ratio(
                get(wan, "davfed_random_cold", "reads_per_s"), get(bare, "random_reads_per_s", "")
            ),
            "wan_ttfb_first": ratio(
                get(bare, "ttfb_first_ms", ""), get(wan, "davfed_ttfb_first_ms", "")
            ),
            "wan_ttfb_later": ratio(
                get(bare, "ttfb_later_ms", ""), get(wan, "davfed_ttfb_later_ms", "")
            ),
        }
        ratios["davfed_vs_bare_http"] = {k: v for k, v in vs_bare.items() if v is not None}
        r["ratios"] = ratios

        rtt = float(wan.get("rtt_nominal_ms", 2 * WAN_DELAY_MS))
        checks: dict[str, dict[str, Any]] = {}

        def check(name: str, value: float | None, ok: Callable[[float], bool]) -> None:
            if value is not None:
                checks[name] = {"value": value, "target": TARGETS[name], "pass": ok(value)}

        check("loopback_cold_vs_curl", ratios["loopback_cold_vs_curl"], lambda v: v >= 0.9)
        check("wan_cold_vs_curl", ratios["wan_cold_vs_curl"], lambda v: v >= 2.0)
        check(
            "wan_random_reads_per_s",
            get(wan, "davfed_random_cold", "reads_per_s"),
            lambda v: v >= 15,
        )
        check(
            "wan_ttfb_first_ms", get(wan, "davfed_ttfb_first_ms", ""), lambda v: v <= 3 * rtt + 10
        )
        check(
            "wan_ttfb_later_ms", get(wan, "davfed_ttfb_later_ms", ""), lambda v: v <= 2 * rtt + 10
        )
        check("warm_vs_disk", ratios["warm_vs_disk"], lambda v: v >= 0.6)
        check(
            "readers16_fetch_ratio", get(lb, "davfed_readers", "fetch_ratio"), lambda v: v <= 1.05
        )
        check("rss_5g_peak_mb", get(r, "rss_5g", "rss_peak_mb"), lambda v: v < 300)
        if ratios["davfed_vs_rclone"]:
            behind = sorted(k for k, v in ratios["davfed_vs_rclone"].items() if v <= 1.0)
            checks["ahead_of_rclone"] = {
                "value": f"behind on {len(behind)} of {len(ratios['davfed_vs_rclone'])}",
                "behind": behind,
                "target": TARGETS["ahead_of_rclone"],
                "pass": not behind,
            }
        if "davfed_readers" in lb:
            checks["readers16_correct"] = {
                "value": lb["davfed_readers"]["all_correct"],
                "target": "all sha256 match",
                "pass": bool(lb["davfed_readers"]["all_correct"]),
            }
        r["targets"] = checks
        cpu_rows: dict[str, Any] = {}
        for group, rows in (("loopback", lb), ("wan", wan), ("", {"rss_5g": r.get("rss_5g")})):
            for name, item in rows.items():
                if (
                    name.startswith(("davfed", "rss"))
                    and isinstance(item, dict)
                    and item.get("cpu_s_per_gib") is not None
                ):
                    cpu_rows[f"{group}.{name}".lstrip(".")] = item["cpu_s_per_gib"]
        r["davfed_cpu_s_per_gib"] = cpu_rows


# --- the table -----------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lb: dict[str, Any] = results.get("loopback", {})
    wan: dict[str, Any] = results.get("wan", {})
    lines: list[str] = []

    def val(d: dict[str, Any], row: str, key: str, unit: str) -> str:
        item = d.get(row)
        value = item.get(key) if isinstance(item, dict) else item
        if value is None:
            return "-"
        return f"{value:,.1f} {unit}" if isinstance(value, float | int) else str(value)

    def extra(d: dict[str, Any], row: str) -> str:
        item = d.get(row)
        if not isinstance(item, dict):
            return ""
        bits = []
        if item.get("cpu_s_per_gib") is not None:
            bits.append(f"cpu {item['cpu_s_per_gib']:.2f} s/GiB")
        if item.get("rss_peak_mb") is not None:
            bits.append(f"rss {item['rss_peak_mb']:.0f} MB")
        if item.get("fetch_ratio") is not None:
            bits.append(f"fetched {item['fetch_ratio']:.2f}x size")
        if item.get("bytes_fetched") is not None and "fetch_ratio" not in item:
            bits.append(f"fetched {human(item['bytes_fetched'])}")
        if "all_correct" in item:
            bits.append("sha256 ok" if item["all_correct"] else "WRONG BYTES")
        return ", ".join(bits)

    def row(label: str, d: dict[str, Any], key: str, field: str, unit: str) -> None:
        if key in d:
            lines.append(f"  {label:<44} {val(d, key, field, unit):>16}   {extra(d, key)}")

    size = human(results.get("file_size", 0))
    lines.append(f"LOOPBACK ({size} file)")
    row("curl -o /dev/null (network limit)", lb, "curl", "mb_s", "MB/s")
    row("block files read from disk (disk limit)", lb, "disk_blocks", "mb_s", "MB/s")
    for tool in ("davfed", "rclone"):
        row(f"{tool} cold sequential", lb, f"{tool}_cold", "mb_s", "MB/s")
        row(f"{tool} warm (page cache dropped)", lb, f"{tool}_warm", "mb_s", "MB/s")
        row(f"{tool} warm (page cache kept)", lb, f"{tool}_warm_pagecache", "mb_s", "MB/s")
        row(f"{tool} random 64 KiB cold", lb, f"{tool}_random_cold", "reads_per_s", "reads/s")
        row(f"{tool} random 64 KiB warm", lb, f"{tool}_random_warm", "reads_per_s", "reads/s")
        readers = lb.get(f"{tool}_readers", {}).get("readers", 16)
        row(
            f"{tool} {readers} readers of one cold file", lb, f"{tool}_readers", "file_mb_s", "MB/s"
        )
    if "rss_5g" in results:
        row("davfed 5-file input set (5 readers)", results, "rss_5g", "mb_s", "MB/s")
    if wan:
        lines.append(
            f"WAN ({wan.get('rtt_nominal_ms')} ms RTT nominal, {wan.get('rtt_measured_ms')} ms "
            f"TCP connect measured, {wan.get('rate')}, {wan.get('method')})"
        )
        row("curl -o /dev/null (one TCP stream)", wan, "curl", "mb_s", "MB/s")
        bare = wan.get("bare_http", {})
        if bare:
            streams = bare.get("parallel_streams")
            row(
                f"bare HTTP, {streams} parallel ranges (link limit)",
                bare,
                "parallel_mb_s",
                "",
                "MB/s",
            )
            row("bare HTTP, 302 + new connection + 1 MiB", bare, "ttfb_first_ms", "", "ms")
            row("bare HTTP, 302 + kept-alive GET of 1 MiB", bare, "ttfb_later_ms", "", "ms")
            row(
                "bare HTTP, random 64 KiB GETs, kept-alive",
                bare,
                "random_reads_per_s",
                "",
                "reads/s",
            )
        for tool in ("davfed", "rclone"):
            row(f"{tool} cold sequential", wan, f"{tool}_cold", "mb_s", "MB/s")
            row(f"{tool} time to first MiB, first file", wan, f"{tool}_ttfb_first_ms", "", "ms")
            row(f"{tool} time to first MiB, later file", wan, f"{tool}_ttfb_later_ms", "", "ms")
            n = wan.get(f"{tool}_random_cold", {}).get("reads", 30)
            row(
                f"{tool} {n} random 64 KiB cold",
                wan,
                f"{tool}_random_cold",
                "reads_per_s",
                "reads/s",
            )
    ratios = results.get("ratios", {})
    lines.append("RATIOS")
    for name in ("loopback_cold_vs_curl", "warm_vs_disk", "warm_pagecache_vs_disk",
                 "wan_cold_vs_curl", "wan_rclone_cold_vs_curl"):  # fmt: skip
        if ratios.get(name) is not None:
            lines.append(f"  {name:<44} {ratios[name]:>14.2f}x")
    for name, value in ratios.get("davfed_vs_rclone", {}).items():
        lines.append(f"  {'davfed/rclone ' + name:<44} {value:>14.2f}x")
    for name, value in ratios.get("davfed_vs_bare_http", {}).items():
        lines.append(f"  {'davfed/bare HTTP ' + name:<44} {value:>14.2f}x")
    lines.append("TARGETS (issue 5)")
    for name, c in results.get("targets", {}).items():
        value = c["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        verdict = "ok" if c["pass"] else "MISS"
        lines.append(f"  {name:<30} {shown:>24}   target {c['target']:<18} {verdict}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=GiB, help="size of the test file (1G)")
    p.add_argument(
        "--quick", action="store_true", help="256M file, 500 random reads, no 5-file RSS set"
    )
    p.add_argument("--no-wan", dest="wan", action="store_false", help="skip the 50 ms link")
    p.add_argument("--no-rclone", dest="rclone", action="store_false", help="skip rclone rows")
    p.add_argument(
        "--no-rss-set",
        dest="rss_set",
        action="store_false",
        help="skip the peak-RSS run over a 5-file input set (5 x --size)",
    )
    p.add_argument("--random-reads", type=int, default=2000, help="loopback random reads (2000)")
    p.add_argument("--wan-random-reads", type=int, default=30, help="WAN random reads (30)")
    p.add_argument("--readers", type=int, default=16, help="concurrent readers (16)")
    p.add_argument("--davfed-opts", default="", help="extra mount options, e.g. readahead=128M")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    if args.quick:
        if args.size == GiB:
            args.size = 256 * MiB
        args.random_reads = min(args.random_reads, 500)
        args.rss_set = False
    if args.size < 16 * MiB:
        p.error("--size must be at least 16M")
    return args


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root (mounts, drop_caches, network namespaces)")
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    for tool in ("curl", "nsenter", "ip", "tc"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    if args.wan and not (WAN_TOOL / "up").exists() and not netem_available():
        raise BenchError(f"no netem and no WAN tool at {WAN_TOOL} (use --no-wan)")


def main(argv: list[str]) -> int:
    global _quiet
    args = parse_args(argv)
    _quiet = args.json_only
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = time.monotonic()
    bench: Bench | None = None
    error: str | None = None
    try:
        preflight(args)
        version = rclone_version() if args.rclone else None
        if args.rclone and version is None:
            args.rclone = False
        bench = Bench(args)
        bench.results["rclone"] = version
        if args.rclone:
            bench.note(
                "rclone mounts one nginx endpoint's base URL as a webdav remote: it cannot "
                "follow Dynafed's 302s to replicas reliably, so it skips the federation hop"
            )
        bench.prepare_data()
        bench.loopback()
        if args.wan:
            bench.wan()
        bench.results["ok"] = True
    except KeyboardInterrupt as exc:
        error = f"interrupted ({exc})" if str(exc) else "interrupted"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        say("cleaning up")
        CLEANUP.run_all()
    results: dict[str, Any] = bench.results if bench is not None else {"ok": False, "notes": []}
    if error is not None:
        results["error"] = error
        say(f"FAILED: {error}")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    if bench is not None:
        try:
            bench.summarize()
        except Exception as exc:  # the figures measured so far still get printed
            results["summary_error"] = f"{type(exc).__name__}: {exc}"
    if not args.json_only:
        print(table(results), flush=True)
    print(json.dumps(results, sort_keys=False), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
