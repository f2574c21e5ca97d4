"""The HEP analysis row: an uproot job on a ROOT file, local against davfed and rclone.

The file (``hep.root``, written once per run by ``bench/hepjob.py``) is a TTree of
``--hep-entries`` entries and 10 branches in 50,000-entry baskets, zlib-compressed.
The job reads three branches in full and a fourth for 40 scattered entry ranges
(seeded), through ``uproot.open`` of a path, in its own process. Each repetition:
the local file (page cache dropped, and again with it kept), then for davfed and
rclone a fresh mount read cold and read again warm (page cache dropped). Every job's
digest of the arrays it read must equal the local one. Bytes fetched are what the
endpoints' access logs say they sent during the cold job.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchError, CpuMeter, drop_caches, human, say, settled
from bench.mounts import Fetched, Mount

HEP_FILE = "hep.root"
JOB = REPO / "bench" / "hepjob.py"
FULL = ["px", "py", "eta"]
SCATTERED = "energy"
RANGES = 40
RANGE_ENTRIES = 20_000


def uproot_missing() -> str | None:
    """Why the HEP row cannot run here (None: it can)."""
    probe = [sys.executable, "-c", "import uproot, numpy"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return "uproot/numpy are not installed (pip install -e '.[bench]'): no HEP row"
    return None


def write_file(data: Path, entries: int) -> Path:
    path = data / HEP_FILE
    say(f"HEP: writing a ROOT file of {entries:,} entries with uproot")
    subprocess.run([sys.executable, str(JOB), str(path), "--write", str(entries)], check=True)
    say(f"HEP: {path.name} is {human(path.stat().st_size)}")
    return path


def job_args(entries: int) -> list[str]:
    rng = random.Random(40)
    starts = sorted(rng.randrange(0, entries - RANGE_ENTRIES) for _ in range(RANGES))
    ranges = ",".join(f"{s}:{s + RANGE_ENTRIES}" for s in starts)
    return ["--full", ",".join(FULL), "--scattered", SCATTERED, "--ranges", ranges]


def run_job(path: Path, entries: int, pid: int | None = None) -> dict[str, Any]:
    """The job on ``path``; the daemon's CPU (``pid``) alongside the job's own."""
    meter = CpuMeter(pid)
    cmd = [sys.executable, str(JOB), str(path), *job_args(entries)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise BenchError(f"HEP job on {path} failed: {proc.stderr.strip()[-300:]}")
    row: dict[str, Any] = json.loads(proc.stdout)
    row["job_cpu_s"] = row.pop("cpu_s")
    daemon = meter.fields()
    if daemon:
        row["daemon_cpu_s"] = daemon["cpu_s"]
    return row


class HepRows:
    """The HEP rows of one place (loopback or the link), one repetition per :meth:`rep`."""

    def __init__(self, source: Path, entries: int, where: str) -> None:
        self.source = source
        self.entries = entries
        self.size = source.stat().st_size
        self.where = where
        self.digest: str | None = None

    def check(self, row: dict[str, Any], what: str) -> None:
        row["correct"] = row.pop("digest") == self.digest
        if not row["correct"]:
            raise BenchError(f"HEP job through {what} read other bytes than the local file")

    def local(self) -> dict[str, Any]:
        say(f"HEP ({self.where}): the job on the local file")
        drop_caches()
        row = run_job(self.source, self.entries)
        self.digest = row.pop("digest")
        again = run_job(self.source, self.entries)
        return {"local": row, "local_pagecache": {"seconds": again["seconds"]}}

    def mounted(self, name: str, m: Mount, fetched: Fetched) -> dict[str, Any]:
        """Cold and warm job through a fresh mount ``m`` (closed here)."""
        path = m.mnt / HEP_FILE
        path.stat()
        drop_caches()
        subprocess.run(["cat", str(self.source)], stdout=subprocess.DEVNULL, check=True)
        say(f"HEP ({self.where}): the job through {name}, cold")
        before = fetched()
        cold = run_job(path, self.entries, m.pid)
        cold["bytes_fetched"] = settled(fetched) - before
        cold["fetch_ratio"] = round(cold["bytes_fetched"] / self.size, 3)
        self.check(cold, name)
        say(f"HEP ({self.where}): the job through {name}, warm (page cache dropped)")
        drop_caches()
        warm = run_job(path, self.entries, m.pid)
        self.check(warm, name)
        m.close()
        return {f"{name}_cold": cold, f"{name}_warm": warm}


def hep_rep(
    rows: HepRows,
    davfed: Callable[[], Mount],
    fetched: Fetched,
    rclone: Callable[[], Mount] | None,
    rclone_fetched: Fetched,
) -> dict[str, Any]:
    """One repetition: local, davfed, rclone (each through a fresh mount it opens)."""
    res: dict[str, Any] = {"file_bytes": rows.size, "entries": rows.entries}
    res.update(rows.local())
    res.update(rows.mounted("davfed", davfed(), fetched))
    if rclone is not None:
        res.update(rows.mounted("rclone", rclone(), rclone_fetched))
    local = res["local"]["seconds"]
    for name in ("davfed", "rclone"):
        for state in ("cold", "warm"):
            row = res.get(f"{name}_{state}")
            if row is not None:
                row["vs_local"] = round(row["seconds"] / local, 3)
    return res
