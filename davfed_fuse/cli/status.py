"""``davfed status MOUNTPOINT [--json]``: what a running mount says about itself.

Owns: the command line and the text rendering; the document is the daemon's
(``daemon.status``), fetched over the mount's control socket (``system.control``).
Exit status: 0 healthy, 1 usage, 2 not a davfed mount or no answer within 2 s,
3 degraded (docs/operations.md).
Must not import: trio, httpx, pyfuse3.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.exitcodes import Exit
from davfed_fuse.system.control import ControlError, locate, request


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render(doc: dict[str, Any]) -> str:
    """The human-readable status."""
    lines = [
        f"{doc['mountpoint']}: {doc['health']}"
        + (f" ({'; '.join(doc['reasons'])})" if doc["reasons"] else ""),
        f"  federation   {doc['url']}",
        f"  davfed       {doc['version']}, pid {doc['pid']}, up {doc['uptime']:.0f} s",
    ]
    cred = doc["credential"]
    if cred["kind"] is None:
        lines.append("  credential   none")
    else:
        left = cred["seconds_left"]
        lines.append(
            f"  credential   {cred['kind']} from {cred['source']}"
            + (f" ({cred['file']})" if cred["file"] else "")
            + (f", subject {cred['subject']}" if cred["subject"] else "")
            + (f", expires {cred['expiry']} ({left} s left)" if cred["expiry"] else "")
        )
    proxy = doc["proxy"]
    lines.append(f"  proxy        {proxy['in_use']} (list {proxy['list']})")
    cache = doc["cache"]
    if cache is None:
        lines.append("  cache        off (cache_size=0)")
    else:
        lines.append(
            f"  cache        {_size(cache['bytes'])} of {_size(cache['max_bytes'])}, "
            f"{cache['blocks']} blocks, hit rate {100 * cache['hit_rate']:.1f}%, "
            f"fetched {_size(cache['bytes_fetched'])}, pass-through {cache['passthrough']}"
        )
    reads = doc["reads"]
    lines.append(
        f"  reads        {_size(reads['kernel_bytes'])} by the kernel, "
        f"{_size(reads['storage_bytes'])} from storage in {reads['downloads']} downloads; "
        f"{reads['failovers']} failovers, {reads['retries']} retries"
    )
    lines.append(
        f"  open files   {doc['open_files']}, read-ahead transfers {doc['active_readahead']}"
    )
    lines.append(f"  endpoint now {doc['current_endpoint'] or '-'}")
    for e in doc["endpoints"]:
        line = (
            f"    {e['host']}: {e['requests']} requests, {_size(e['bytes'])}, {e['errors']} errors"
        )
        if e["last_error"]:
            line += f"; last {e['last_error']} at {_when(e['last_error_at'])}"
        if e["penalised_until"]:
            line += f"; passed over until {_when(e['penalised_until'])}"
        lines.append(line)
    if doc["errors"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(doc["errors"].items()))
        lines.append(f"  errors       {counts}")
    for w in doc["warnings"]:
        lines.append(f"  {w['level']:<8}     {_when(w['time'])} {w['message']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed status",
        description="The state of a running davfed mount: federation, credential, proxy, "
        "endpoints, cache, errors and recent warnings.",
        epilog="Exit status: 0 healthy, 1 usage, 2 not a davfed mount or no answer within "
        "2 s, 3 degraded (credential expires within an hour, or every endpoint failed in "
        "the last minute). docs/operations.md",
    )
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="the status as one JSON object")
    args = parser.parse_args(list(argv))
    try:
        doc = request(locate(args.mountpoint), ["status"])
    except ControlError as exc:
        print(f"davfed: {exc}", file=sys.stderr)
        return Exit.FAILED if exc.code == 2 else Exit.USAGE
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(doc))
    return Exit.OK if doc.get("health") == "healthy" else Exit.ERROR
