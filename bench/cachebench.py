#!/usr/bin/env python3
"""The benchmark of issues 5 and 12: davfed's block cache against curl, the disk and rclone.

Run it as ``bench/run`` from the repository root (root and ``/dev/fuse`` needed).
Progress goes to stderr; stdout gets a table and, as its last line, one JSON object
with every figure of every repetition. Everything it creates (the data in /tmp,
mounts, network namespaces, federations, rclone) is removed in ``finally``, also on
Ctrl-C and SIGTERM. See ``bench/README.md`` for what each row means.

Modules: ``common`` (tools), ``mounts`` (davfed, rclone, federations, the link),
``rows`` (stream rows), ``hep`` + ``hepjob`` (the HEP analysis row), ``report``
(ratios per repetition, medians, targets, the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hep, report
from bench.common import (
    CLEANUP,
    WAN_DELAY_MS,
    WAN_RATE,
    WAN_TOOL,
    BenchError,
    GiB,
    MiB,
    Quiet,
    human,
    on_signal,
    parse_size,
    say,
)
from bench.mounts import (
    Mount,
    NetnsFederation,
    RcloneMount,
    WanLink,
    Workspace,
    netem_available,
    rclone_version,
    write_random,
)
from bench.rows import FAMILIES, Ctx, loopback_rep, rclone_wan_args, rss_set, wan_rep
from davfed_testfed import TestFederation


class Bench:
    """One run: the data, then each family's repetitions (set-up shared by them)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        ws = Workspace()
        self.ctx = Ctx(args, ws, ws.data / "big.bin", args.size)
        self.reps: list[dict[str, Any]] = [{} for _ in range(args.repeat)]
        self.hep_file: Path | None = None
        self.results: dict[str, Any] = {
            "bench": "davfed-cachebench",
            "ok": False,
            "file_size": args.size,
            "repeat": args.repeat,
            "rows": sorted(args.rows),
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "loadavg_start": os.getloadavg(),
            },
            "reps": self.reps,
            "notes": self.ctx.notes,
        }

    def prepare_data(self) -> None:
        ctx, data = self.ctx, self.ctx.ws.data
        say(f"writing {human(ctx.size)} of random data to {ctx.big}")
        ctx.sha = write_random(ctx.big, ctx.size)
        for name in ("ttfb_a.bin", "ttfb_b.bin"):
            write_random(data / name, 8 * MiB)
        if ctx.wants("rss"):
            # 5 names of the big file (hard links: 5 URLs, 5 cache entries, 1 file in /tmp)
            (data / "set").mkdir()
            for i in range(5):
                os.link(ctx.big, data / "set" / f"input{i}.bin")
        if ctx.wants("hep"):
            why = hep.uproot_missing()
            if why is not None:
                ctx.note(why)
            else:
                self.hep_file = hep.write_file(data, self.args.hep_entries)

    def loopback(self) -> None:
        ctx = self.ctx
        say("starting the test federation (3 nginx endpoints) on loopback")
        fed = TestFederation(ctx.ws.data, endpoints=3, health_period=1.0, max_latency=2.0)
        fed.start()
        key = CLEANUP.push("loopback federation", fed.stop)
        fetched = lambda: sum(fed.bytes_sent(i) for i in range(len(fed.endpoints)))  # noqa: E731
        ep0 = lambda: fed.bytes_sent(0)  # noqa: E731
        base = fed.endpoints[0].base_url
        for i, rep in enumerate(self.reps):
            say(f"loopback: repetition {i + 1} of {len(self.reps)}")
            rep["loopback"] = loopback_rep(
                ctx, fed.url, fed.replica_url("big.bin", 0), base, fetched, ep0
            )
            if ctx.wants("rss"):
                rep["rss_5g"] = rss_set(ctx, fed.url, fetched)
            if self.hep_file is not None:
                rows = hep.HepRows(self.hep_file, self.args.hep_entries, "loopback")

                def rclone() -> Mount:
                    return RcloneMount(ctx.ws, base)

                rep.setdefault("hep", {})["loopback"] = hep.hep_rep(
                    rows,
                    lambda: ctx.davfed(fed.url),
                    fetched,
                    rclone if self.args.rclone else None,
                    ep0,
                )
        CLEANUP.release(key)

    def wan(self) -> None:
        ctx = self.ctx
        say(f"WAN: setting up namespaces ({2 * WAN_DELAY_MS} ms RTT, {WAN_RATE})")
        link = WanLink()
        fed = NetnsFederation(ctx.ws.data, link.srv)
        extra = rclone_wan_args(ctx, self.results.get("rclone")) if self.args.rclone else []
        self.results["rclone_wan_args"] = extra
        base = str(fed.endpoints[0]["base_url"])
        ep0 = lambda: fed.bytes_sent_by(0)  # noqa: E731
        for i, rep in enumerate(self.reps):
            say(f"WAN: repetition {i + 1} of {len(self.reps)}")
            if ctx.wants("wan"):
                rep["wan"] = wan_rep(ctx, link, fed, extra)
                rep["wan"].update(rtt_nominal_ms=2 * WAN_DELAY_MS, rate=WAN_RATE)
                rep["wan"]["method"] = link.method
            if self.hep_file is not None:
                rows = hep.HepRows(self.hep_file, self.args.hep_entries, "wan")
                rclone_reps = self.args.hep_rclone_wan_reps
                use_rclone = self.args.rclone and i < rclone_reps

                def rclone() -> Mount:
                    return RcloneMount(ctx.ws, base, netns=link.cli, extra=extra)

                rep.setdefault("hep", {})["wan"] = hep.hep_rep(
                    rows,
                    lambda: ctx.davfed(fed.url, netns=link.cli),
                    fed.bytes_sent,
                    rclone if use_rclone else None,
                    ep0,
                )
        if self.hep_file is not None and self.args.rclone and rclone_reps < len(self.reps):
            ctx.note(
                f"the HEP job through rclone over the link ran in {rclone_reps} of "
                f"{len(self.reps)} repetitions (--hep-rclone-wan-reps): it takes minutes"
            )
        fed.close()
        link.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size", type=parse_size, default=GiB, help="size of the test file (1G)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every row (3)")
    p.add_argument(
        "--rows",
        default=",".join(FAMILIES),
        help=f"row families to run, comma-separated, of {','.join(FAMILIES)} (all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one repetition, 256M file, 500 random reads, no 5-file set, 2M-entry HEP file",
    )
    p.add_argument("--no-wan", dest="wan", action="store_false", help="skip the 50 ms link")
    p.add_argument("--no-rclone", dest="rclone", action="store_false", help="skip rclone rows")
    p.add_argument(
        "--no-rss-set", dest="rss_set", action="store_false", help="skip the 5-file input set"
    )
    p.add_argument("--random-reads", type=int, default=2000, help="loopback random reads (2000)")
    p.add_argument("--wan-random-reads", type=int, default=30, help="WAN random reads (30)")
    p.add_argument("--readers", type=int, default=16, help="concurrent readers (16)")
    p.add_argument(
        "--hep-entries", type=int, default=6_000_000, help="entries of the HEP file (6000000)"
    )
    p.add_argument(
        "--hep-rclone-wan-reps",
        type=int,
        default=1,
        help="repetitions with the (minutes-long) HEP job through rclone over the link (1)",
    )
    p.add_argument("--davfed-opts", default="", help="extra mount options, e.g. readahead=128M")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    rows = {r.strip() for r in args.rows.split(",") if r.strip()}
    unknown = rows - set(FAMILIES)
    if unknown:
        p.error(f"unknown row families {sorted(unknown)} (choose from {','.join(FAMILIES)})")
    if args.quick:
        if args.size == GiB:
            args.size = 256 * MiB
        if "--repeat" not in " ".join(argv):
            args.repeat = 1
        args.random_reads = min(args.random_reads, 500)
        args.hep_entries = min(args.hep_entries, 2_000_000)
        args.rss_set = False
    if not args.rss_set:
        rows.discard("rss")
    if not args.wan:
        rows.discard("wan")
    args.rows = rows
    if args.size < 16 * MiB:
        p.error("--size must be at least 16M")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
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
    args = parse_args(argv)
    Quiet.on = args.json_only
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
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
            bench.ctx.note(
                "rclone mounts one nginx endpoint's base URL as a webdav remote: it cannot "
                "follow Dynafed's 302s to replicas reliably, so it skips the federation hop"
            )
        bench.prepare_data()
        if args.rows & {"seq", "random", "readers", "rss", "hep"}:
            bench.loopback()
        if args.wan and args.rows & {"wan", "hep"}:
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
    results.setdefault("machine", {})["loadavg_end"] = os.getloadavg()
    try:
        report.summarize(results)
    except Exception as exc:  # the figures measured so far still get printed
        results["summary_error"] = f"{type(exc).__name__}: {exc}"
    if not args.json_only:
        print(report.table(results), flush=True)
    print(json.dumps(results, sort_keys=False), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
