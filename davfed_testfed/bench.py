"""Redirect cost benchmark: ``curl -L`` through the federation's 302 vs ``curl`` on the replica.

``python -m davfed_testfed.bench [--size-mib 1024] [--runs 5] [--dir /tmp/davfed-bench]``

Creates a file of random bytes (once; kept for later runs) outside the repository,
starts a one-endpoint federation over it, warms the page cache, then alternates
direct and redirected downloads to ``/dev/null`` and prints the median speeds and
their ratio. The issue asks for a ratio of at least 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from davfed_testfed.handle import TestFederation

MiB = 1 << 20


def make_file(path: Path, size: int) -> None:
    """Random bytes (not sparse), written once."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 16 * MiB)
            f.write(os.urandom(n))
            remaining -= n
    os.replace(tmp, path)


def curl_speed(url: str, follow: bool) -> float:
    """Bytes per second of one ``curl`` download to /dev/null."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}"]
    if follow:
        args.append("-L")
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    speed, size = out.split()
    return float(speed) if int(float(size)) > 0 else 0.0


def run(size: int, runs: int, directory: Path) -> float:
    data_dir = directory / "data"
    target = data_dir / f"random-{size // MiB}MiB.bin"
    make_file(target, size)
    with target.open("rb") as f:  # warm the page cache
        while f.read(16 * MiB):
            pass
    with TestFederation(data_dir, endpoints=1) as fed:
        relpath = target.name
        direct_url = fed.replica_url(relpath, 0)
        fed_url = fed.file_url(relpath)
        curl_speed(direct_url, False)  # one warm-up each
        curl_speed(fed_url, True)
        direct, redirected = [], []
        for _ in range(runs):
            direct.append(curl_speed(direct_url, False))
            redirected.append(curl_speed(fed_url, True))
        served = fed.bytes_sent(0)
    d, r = statistics.median(direct), statistics.median(redirected)

    def speeds(values: list[float]) -> str:
        return ", ".join(f"{x / MiB:.0f}" for x in values)

    print(f"file: {target} ({size / MiB:.0f} MiB), {runs} runs each")
    print(f"federation startup: {fed.startup_seconds:.2f} s")
    print(f"direct   curl    : median {d / MiB:8.1f} MiB/s  ({speeds(direct)})")
    print(f"redirect curl -L : median {r / MiB:8.1f} MiB/s  ({speeds(redirected)})")
    print(f"ratio redirect/direct: {r / d:.3f}   (endpoint served {served / MiB:.0f} MiB)")
    return r / d


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m davfed_testfed.bench")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/davfed-bench"))
    args = parser.parse_args(argv)
    ratio = run(args.size_mib * MiB, args.runs, args.dir)
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
