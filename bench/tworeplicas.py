"""Two-path replica benchmark (issue 16): davfed's replica choice over two emulated links.

``bench/tworeplicas [--size-mib 256] [--runs 3] [--near-ms 5] [--far-ms 40] [--rate 1gbit]``

Builds one client and one server network namespace joined by TWO veth pairs, each
with its own delay (nfqdelay, ../shared/tools/wan/nfqdelay.c, on the ingress of
both ends: RTT = 2 x the one-way delay given) and tbf rate:

    tr-cli 169.254.81.1 <-- near link --> 169.254.81.2 tr-srv  (front end, near endpoint)
    tr-cli 169.254.82.1 <-- far link  --> 169.254.82.2 tr-srv  (far endpoint)

A test federation in tr-srv has endpoint 0 on the far address and endpoint 1 on the
near one; its geo order puts the FAR one first. A second federation with only the near
endpoint is "reading the near endpoint directly". Each row mounts davfed (cold cache,
fresh mount) in tr-cli and reads a file: time to its first MiB, the whole file's speed,
and 64 KiB random reads. Rows alternate, ``--runs`` times; medians are printed.
Then the same with two EQUAL links (``--equal-ms``) for multi-replica read-ahead vs
one link. The last line of stdout is one JSON object. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WAN_TOOL = Path(os.environ.get("DAVFED_WAN_TOOL", REPO.parent / "shared" / "tools" / "wan"))
NFQDELAY = Path(os.environ.get("NFQDELAY", "/tmp/davfed-wan/nfqdelay"))
HELPER = REPO / "bin" / "mount.davfed"
PYTHON = REPO / ".venv" / "bin" / "python"
MiB = 1 << 20
CLI, SRV = "tr-cli", "tr-srv"
NEAR, FAR = ("169.254.81.1", "169.254.81.2"), ("169.254.82.1", "169.254.82.2")


def sh(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def ns(name: str, cmd: Sequence[str]) -> list[str]:
    # nsenter --net, never `ip netns exec` (its private mount namespace hides FUSE mounts)
    return ["nsenter", f"--net=/run/netns/{name}", "--", *cmd]


@contextmanager
def two_links(near_ms: float, far_ms: float, rate: str) -> Iterator[None]:
    """The two namespaces and links; everything is removed on exit."""
    if not NFQDELAY.exists():
        sh([str(WAN_TOOL / "setup"), str(NFQDELAY)])
    ipt = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"
    procs: list[subprocess.Popen[bytes]] = []
    sh(["ip", "netns", "add", CLI])
    sh(["ip", "netns", "add", SRV])
    try:
        for ns_name in (CLI, SRV):
            sh(["ip", "-n", ns_name, "link", "set", "lo", "up"])
        for tag, (caddr, saddr), delay, queue in (
            ("n", NEAR, near_ms, 811),
            ("f", FAR, far_ms, 812),
        ):
            c, s = f"tr{tag}c0", f"tr{tag}s0"
            sh(["ip", "link", "add", c, "netns", CLI, "type", "veth", "peer", "name", s,
                "netns", SRV])  # fmt: skip
            sh(["ip", "-n", CLI, "addr", "add", f"{caddr}/30", "dev", c])
            sh(["ip", "-n", SRV, "addr", "add", f"{saddr}/30", "dev", s])
            for ns_name, dev in ((CLI, c), (SRV, s)):
                sh(["ip", "-n", ns_name, "link", "set", dev, "up"])
                sh(ns(ns_name, [ipt, "-A", "INPUT", "-i", dev, "-j", "NFQUEUE",
                                "--queue-num", str(queue), "--queue-bypass"]))  # fmt: skip
                sh(["tc", "-n", ns_name, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    rate, "burst", "1mb", "latency", "50ms"])  # fmt: skip
                procs.append(
                    subprocess.Popen(
                        ns(ns_name, [str(NFQDELAY), "-q", str(queue), "-d", f"{delay:g}"]),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        sh(["ip", "netns", "del", CLI], check=False)
        sh(["ip", "netns", "del", SRV], check=False)


@contextmanager
def federation(data: Path, hosts: Sequence[str]) -> Iterator[str]:
    """A test federation in tr-srv, endpoint i on ``hosts[i]`` (geo order: endpoint order)."""
    cmd = [str(PYTHON), "-m", "davfed_fuse", "testfed", str(data), "--port", "0",
           "--host", NEAR[1], "--endpoints", str(len(hosts)),
           "--endpoint-hosts", ",".join(hosts), "--ready-json", "--watch-stdin"]  # fmt: skip
    proc = subprocess.Popen(ns(SRV, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("test federation did not start")
        yield str(json.loads(line)["url"])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)


@contextmanager
def mount(url: str, opts: str, work: Path) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(dir=work, prefix="mnt"))
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache"))
    sh(ns(CLI, [str(HELPER), url, str(mnt), "-o", f"cache_dir={cache},{opts}"]))
    try:
        yield mnt
    finally:
        sh(["umount", str(mnt)], check=False)
        shutil.rmtree(cache, ignore_errors=True)


def read_file(path: Path) -> tuple[float, float]:
    """(seconds to the first MiB, MB/s of the whole file), read as cat does (128 KiB)."""
    started = time.monotonic()
    first = 0.0
    done = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(128 * 1024):
            done += len(block)
            if not first and done >= MiB:
                first = time.monotonic() - started
    return first, done / (time.monotonic() - started) / 1e6


def random_reads(path: Path, size: int, count: int = 16) -> float:
    """Median milliseconds of 64 KiB reads at random offsets of a cold file (few enough
    that most land in blocks not cached yet)."""
    rng = random.Random(16)
    times = []
    with open(path, "rb", buffering=0) as f:
        for _ in range(count):
            offset = rng.randrange(0, size - 65536) & ~4095
            started = time.monotonic()
            os.pread(f.fileno(), 65536, offset)
            times.append((time.monotonic() - started) * 1e3)
    return statistics.median(times)


def tables(mnt: Path) -> dict[str, int]:
    value: dict[str, int] = json.loads(os.getxattr(mnt, "user.davfed.tables"))
    return value


def make_data(root: Path, size: int, names: Sequence[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = root / name
        if not (path.exists() and path.stat().st_size == size):
            with path.open("wb") as f:
                for _ in range(size // MiB):
                    f.write(os.urandom(MiB))
        with path.open("rb") as f:  # warm the servers' page cache
            while f.read(16 * MiB):
                pass


def measure(url: str, opts: str, work: Path, name: str, size: int) -> dict[str, Any]:
    with mount(url, opts, work) as mnt:
        first, speed = read_file(mnt / name)
        counts = tables(mnt)
    with mount(url, opts, work) as mnt:
        rnd = random_reads(mnt / name, size)
    return {"first_mib_ms": first * 1e3, "mb_s": speed, "random_64k_ms": rnd, "tables": counts}


def rows(
    cases: dict[str, tuple[str, str]], runs: int, work: Path, name: str, size: int
) -> dict[str, dict[str, Any]]:
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    for _ in range(runs):  # alternate the rows: the machine is shared
        for key, (url, opts) in cases.items():
            got[key].append(measure(url, opts, work, name, size))
    out = {}
    for key, results in got.items():
        out[key] = {
            field: statistics.median(r[field] for r in results)
            for field in ("first_mib_ms", "mb_s", "random_64k_ms")
        }
        out[key]["runs_mb_s"] = [round(r["mb_s"], 1) for r in results]
        out[key]["tables"] = {
            k: v for k, v in results[-1]["tables"].items() if k.startswith("replica_")
        }
    return out


def print_rows(title: str, table: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'row':34} {'first MiB ms':>13} {'MB/s':>8} {'rand 64K ms':>12}  runs MB/s")
    for key, row in table.items():
        print(f"{key:34} {row['first_mib_ms']:13.1f} {row['mb_s']:8.1f} "
              f"{row['random_64k_ms']:12.1f}  {row['runs_mb_s']}")  # fmt: skip


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/tworeplicas")
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--near-ms", type=float, default=5.0, help="one-way delay (RTT = 2x)")
    p.add_argument("--far-ms", type=float, default=40.0, help="one-way delay (RTT = 2x)")
    p.add_argument("--equal-ms", type=float, default=5.0, help="both links, second part")
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--equal-rate", default=None, help="rate of the equal links (default --rate)")
    p.add_argument("--skip-different", action="store_true")
    p.add_argument("--dir", type=Path, default=Path("/tmp/davfed-tworeplicas"))
    p.add_argument("--skip-equal", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/tworeplicas: needs root (network namespaces, FUSE)", file=sys.stderr)
        return 1
    size = args.size_mib * MiB
    name = "file.bin"
    data = args.dir / "data"
    make_data(data, size, [name])
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="run"))
    result: dict[str, Any] = {"load_before": load(), "size_mib": args.size_mib}
    ml = "replica_choice=measured"
    fed = "replica_choice=federation"
    with (
        two_links(args.near_ms, args.far_ms, args.rate),
        federation(data, [FAR[1], NEAR[1]]) as two,
        federation(data, [NEAR[1]]) as near,
    ):
        if not args.skip_different:
            table = rows(
                {
                    "near endpoint directly": (near, fed),
                    "federation's choice (far first)": (two, fed),
                    "measured choice": (two, ml),
                    "multi-replica read-ahead": (two, f"{ml},multi_replica=on"),
                },
                args.runs,
                work,
                name,
                size,
            )
    if not args.skip_different:
        rtt = f"RTT {2 * args.near_ms:g} ms / {2 * args.far_ms:g} ms, {args.rate} each"
        print_rows(f"Two links, {rtt}; {args.size_mib} MiB, median of {args.runs}", table)
        measured = table["measured choice"]["mb_s"] / table["near endpoint directly"]["mb_s"]
        print(f"measured / near directly: {measured:.2f} (target >= 0.9)")
        result["different_links"] = {"links": rtt, "rows": table, "measured_vs_near": measured}
    if not args.skip_equal:
        rate = args.equal_rate or args.rate
        with (
            two_links(args.equal_ms, args.equal_ms, rate),
            federation(data, [FAR[1], NEAR[1]]) as two,
        ):
            table = rows(
                {
                    "one link (parallel ranges)": (two, fed),
                    "multi-replica read-ahead": (two, f"{fed},multi_replica=on"),
                },
                args.runs,
                work,
                name,
                size,
            )
        rtt = f"RTT {2 * args.equal_ms:g} ms both, {rate} each"
        print_rows(f"Two equal links, {rtt}; median of {args.runs}", table)
        multi = (
            table["multi-replica read-ahead"]["mb_s"] / table["one link (parallel ranges)"]["mb_s"]
        )
        print(f"multi-replica / one link: {multi:.2f} (target >= 1.6)")
        result["equal_links"] = {"links": rtt, "rows": table, "multi_vs_one": multi}
    result["load_after"] = load()
    print(f"load average before {result['load_before']}, after {result['load_after']} (2 cores)")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
