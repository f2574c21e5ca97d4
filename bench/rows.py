"""The stream rows: sequential, random, concurrent readers and the input set, on loopback
and over the emulated link. One repetition of a family per call; ``cachebench`` repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    CpuMeter,
    MiB,
    check_sample,
    drop_caches,
    in_netns,
    log_requests,
    measure,
    parallel_readers,
    proc_hwm_mb,
    random_offsets,
    random_reads,
    read_paths,
    run,
    say,
    settled,
    ttfb_ms,
)
from bench.mounts import (
    DavfedMount,
    Fetched,
    Mount,
    NetnsFederation,
    RcloneMount,
    WanLink,
    Workspace,
    curl,
)

#: Row families ``--rows`` selects from.
FAMILIES = ("seq", "random", "readers", "rss", "wan", "hep")


@dataclass
class Ctx:
    """What every row needs: the options, the workspace, the big file and the notes."""

    args: argparse.Namespace
    ws: Workspace
    big: Path
    size: int
    sha: str = ""
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            say(f"note: {text}")

    def wants(self, family: str) -> bool:
        return family in self.args.rows

    def cold_prep(self, source: Path | None = None) -> None:
        """Page cache dropped, then the served file read once (nginx serves from memory)."""
        drop_caches()
        read_paths([source or self.big])

    def davfed(self, url: str, netns: str | None = None) -> DavfedMount:
        return DavfedMount(self.ws, url, netns=netns, extra_opts=self.args.davfed_opts)


# --- loopback ------------------------------------------------------------------------------


def loopback_rep(
    ctx: Ctx, fed_url: str, replica: str, base_url: str, fetched: Fetched, ep0: Fetched
) -> dict[str, Any]:
    """One repetition of the loopback stream rows; the rows of this repetition."""
    res: dict[str, Any] = {}
    if ctx.wants("seq"):
        ctx.cold_prep()
        say("loopback: curl -o /dev/null of the replica URL")
        res["curl"] = curl(replica)
        m = ctx.davfed(fed_url)
        sequential_rows(ctx, res, "davfed", m, fetched)
        blocks = m.block_files()
        block_bytes = sum(p.stat().st_size for p in blocks)
        if block_bytes != ctx.size:
            ctx.note(f"block files hold {block_bytes} bytes, the file has {ctx.size}")
        say(f"loopback: reading the {len(blocks)} block files directly (page cache dropped)")
        drop_caches()
        res["disk_blocks"] = measure(None, lambda: read_paths(blocks))
        res["disk_blocks"]["files"] = len(blocks)
        res["davfed_seq_rss_peak_mb"] = proc_hwm_mb(m.pid)
        m.close()
        if ctx.args.rclone:
            r = RcloneMount(ctx.ws, base_url)
            sequential_rows(ctx, res, "rclone", r, ep0)
            r.close()

    def open_davfed() -> Mount:
        return ctx.davfed(fed_url)

    def open_rclone() -> Mount:
        return RcloneMount(ctx.ws, base_url)

    tools: list[tuple[str, Callable[[], Mount], Fetched]] = [("davfed", open_davfed, fetched)]
    if ctx.args.rclone:
        tools.append(("rclone", open_rclone, ep0))
    for name, opener, counter in tools:
        if ctx.wants("random"):
            random_rows(ctx, res, name, opener, counter)
        if ctx.wants("readers"):
            readers_row(ctx, res, name, opener, counter)
    return res


def sequential_rows(ctx: Ctx, res: dict[str, Any], name: str, m: Mount, fetched: Fetched) -> None:
    """The big file read through ``m``: cold, warm (page cache dropped), warm (kept)."""
    say(f"loopback: {name} cold sequential read")
    path = m.mnt / "big.bin"
    os.listdir(m.mnt)
    path.stat()
    ctx.cold_prep()
    before = fetched()
    res[f"{name}_cold"] = measure(m.pid, lambda: read_paths([path]))
    res[f"{name}_cold"]["fetch_ratio"] = round((settled(fetched) - before) / ctx.size, 3)
    check_sample(path, ctx.big, ctx.size)
    say(f"loopback: {name} warm read (page cache dropped)")
    drop_caches()
    res[f"{name}_warm"] = measure(m.pid, lambda: read_paths([path]))
    say(f"loopback: {name} warm read (page cache kept)")
    res[f"{name}_warm_pagecache"] = measure(m.pid, lambda: read_paths([path]))


def random_rows(
    ctx: Ctx, res: dict[str, Any], name: str, open_mount: Callable[[], Mount], fetched: Fetched
) -> None:
    """Random 64 KiB reads of the big file through a fresh mount: cold, then warm."""
    n = ctx.args.random_reads
    say(f"loopback: {name} {n} random 64 KiB reads, cold then warm")
    m = open_mount()
    path = m.mnt / "big.bin"
    path.stat()
    ctx.cold_prep()
    before = fetched()
    meter = CpuMeter(m.pid)
    cold = random_reads(path, ctx.big, ctx.size, n, seed=1)
    cold.update(meter.fields())
    cold["bytes_fetched"] = settled(fetched) - before
    res[f"{name}_random_cold"] = cold
    drop_caches()
    meter = CpuMeter(m.pid)
    warm = random_reads(path, ctx.big, ctx.size, n, seed=1)
    warm.update(meter.fields())
    res[f"{name}_random_warm"] = warm
    m.close()


def readers_row(
    ctx: Ctx, res: dict[str, Any], name: str, open_mount: Callable[[], Mount], fetched: Fetched
) -> None:
    """``--readers`` processes reading the same cold file through a fresh mount."""
    readers = ctx.args.readers
    say(f"loopback: {name}, {readers} processes reading the same cold file")
    m = open_mount()
    path = m.mnt / "big.bin"
    path.stat()
    ctx.cold_prep()
    before = fetched()
    meter = CpuMeter(m.pid)
    row = parallel_readers(path, readers, ctx.sha)
    row.update(meter.fields(readers * ctx.size))
    row["bytes_fetched"] = settled(fetched) - before
    row["fetch_ratio"] = round(row["bytes_fetched"] / ctx.size, 3)
    row["rss_peak_mb"] = proc_hwm_mb(m.pid)
    res[f"{name}_readers"] = row
    if not row["all_correct"]:
        ctx.note(f"{row['wrong_readers']} of {readers} {name} readers got wrong bytes")
    m.close()


def rss_set(ctx: Ctx, url: str, fetched: Fetched) -> dict[str, Any]:
    say("loopback: davfed peak RSS while 5 processes read a 5-file input set")
    m = ctx.davfed(url)
    paths = [m.mnt / "set" / f"input{i}.bin" for i in range(5)]
    for p in paths:
        p.stat()
    ctx.cold_prep()
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
    if row["bytes"] != 5 * ctx.size:
        ctx.note(f"input set: read {row['bytes']} bytes, expected {5 * ctx.size}")
    m.close()
    return row


# --- WAN -----------------------------------------------------------------------------------


def rclone_wan_args(ctx: Ctx, version: str | None) -> list[str]:
    proc = run(["rclone", "mount", "--help"], check=False, timeout=30)
    if "--vfs-read-chunk-streams" in proc.stdout:
        return ["--vfs-read-chunk-streams", "8"]
    ctx.note(
        f"{version} has no --vfs-read-chunk-streams: the WAN rclone rows read with one "
        "stream (rclone's defaults), not the 8 chunk streams of the issue's 87 MB/s figure"
    )
    return []


def wan_rep(
    ctx: Ctx, link: WanLink, fed: NetnsFederation, rclone_extra: list[str]
) -> dict[str, Any]:
    """One repetition of the stream rows over the link."""
    res: dict[str, Any] = {}
    size = ctx.size
    ctx.cold_prep()
    say("WAN: curl -o /dev/null of the replica URL over the link")
    res["curl"] = curl(fed.replica_url("big.bin"), link.cli)
    res["rtt_measured_ms"] = res["curl"]["connect_ms"]
    say("WAN: what a bare HTTP client gets over the link (bench/linkprobe.py)")
    offsets = random_offsets(size, ctx.args.wan_random_reads, seed=2)
    probe = [
        sys.executable, str(REPO / "bench" / "linkprobe.py"), "--federation", fed.url,
        "--big", "big.bin", "--size", str(size), "--first", "ttfb_a.bin",
        "--later", "ttfb_b.bin", "--offsets", ",".join(map(str, offsets)),
    ]  # fmt: skip
    res["bare_http"] = json.loads(run(in_netns(link.cli, probe), timeout=600).stdout)

    say("WAN: davfed time to first byte, then cold sequential read")
    m = ctx.davfed(fed.url, netns=link.cli)
    os.listdir(m.mnt)
    for name in ("ttfb_a.bin", "ttfb_b.bin", "big.bin"):
        (m.mnt / name).stat()
    read_paths([ctx.ws.data / "ttfb_a.bin", ctx.ws.data / "ttfb_b.bin"])
    res["davfed_ttfb_first_ms"] = ttfb_ms(m.mnt / "ttfb_a.bin")
    res["davfed_ttfb_later_ms"] = ttfb_ms(m.mnt / "ttfb_b.bin")
    time.sleep(0.5)  # what davfed asked the endpoints for, for the record
    res["davfed_ttfb_requests"] = log_requests(fed.access_logs, "/ttfb_")
    ctx.cold_prep()
    before = fed.bytes_sent()
    path = m.mnt / "big.bin"
    res["davfed_cold"] = measure(m.pid, lambda: read_paths([path]))
    res["davfed_cold"]["fetch_ratio"] = round((settled(fed.bytes_sent) - before) / size, 3)
    check_sample(path, ctx.big, size)
    m.close()

    n = ctx.args.wan_random_reads
    say(f"WAN: davfed {n} cold random 64 KiB reads")
    m = ctx.davfed(fed.url, netns=link.cli)
    (m.mnt / "big.bin").stat()
    ctx.cold_prep()
    res["davfed_random_cold"] = random_reads(m.mnt / "big.bin", ctx.big, size, n, seed=2)
    m.close()

    if ctx.args.rclone:
        base = str(fed.endpoints[0]["base_url"])
        say("WAN: rclone time to first byte, then cold sequential read")
        r = RcloneMount(ctx.ws, base, netns=link.cli, extra=rclone_extra)
        os.listdir(r.mnt)
        for name in ("ttfb_a.bin", "ttfb_b.bin", "big.bin"):
            (r.mnt / name).stat()
        read_paths([ctx.ws.data / "ttfb_a.bin", ctx.ws.data / "ttfb_b.bin"])
        res["rclone_ttfb_first_ms"] = ttfb_ms(r.mnt / "ttfb_a.bin")
        res["rclone_ttfb_later_ms"] = ttfb_ms(r.mnt / "ttfb_b.bin")
        ctx.cold_prep()
        path = r.mnt / "big.bin"
        res["rclone_cold"] = measure(r.pid, lambda: read_paths([path]))
        check_sample(path, ctx.big, size)
        r.close()
        say(f"WAN: rclone {n} cold random 64 KiB reads")
        r = RcloneMount(ctx.ws, base, netns=link.cli, extra=rclone_extra)
        (r.mnt / "big.bin").stat()
        ctx.cold_prep()
        res["rclone_random_cold"] = random_reads(r.mnt / "big.bin", ctx.big, size, n, seed=2)
        r.close()
    return res


__all__ = ["FAMILIES", "Ctx", "MiB", "loopback_rep", "rclone_wan_args", "rss_set", "wan_rep"]
