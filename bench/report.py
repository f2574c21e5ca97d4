"""From the repetitions to the figures: ratios per repetition, medians, targets, the table.

Every ratio is computed within one repetition (rows measured side by side), then the
median of those ratios is reported with their min and max; a row's own figures are
reported the same way. Targets are checked on medians, except the cold read's CPU per
GiB, which must hold in every repetition.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.common import WAN_DELAY_MS, human

Number = int | float

#: name -> (what it says, JSON key in ``ratios``/figures, test)
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "cold_cpu_s_per_gib_max": ("<= 1.2 in every repetition", lambda v: v <= 1.2),
    "cold_cpu_max_over_min": ("<= 1.3", lambda v: v <= 1.3),
    "warm_vs_disk": (">= 0.8", lambda v: v >= 0.8),
    "vs_rclone.loopback_warm": (">= 1.3", lambda v: v >= 1.3),
    "vs_rclone.loopback_cold": (">= 2.5", lambda v: v >= 2.5),
    "loopback_cold_vs_curl": (">= 0.3", lambda v: v >= 0.3),
    "vs_bare.wan_cold_vs_parallel_gets": (">= 0.95", lambda v: v >= 0.95),
    "vs_rclone.loopback_random_cold": (">= 1.5", lambda v: v >= 1.5),
    "vs_rclone.loopback_random_warm": (">= 1.5", lambda v: v >= 1.5),
    "vs_bare.wan_random_cold": (">= 0.95", lambda v: v >= 0.95),
    "vs_bare.wan_ttfb_first": (">= 0.95", lambda v: v >= 0.95),
    "vs_bare.wan_ttfb_later": (">= 0.95", lambda v: v >= 0.95),
    "readers16_fetch_ratio": ("<= 1.05", lambda v: v <= 1.05),
    "rss_5g_peak_mb": ("< 300", lambda v: v < 300),
    "hep.fetch_ratio_max": ("<= 1.1 (davfed, every cold job)", lambda v: v <= 1.1),
    "hep.wan.davfed_cold_s": ("<= 8", lambda v: v <= 8),
    "hep.loopback.davfed_cold_vs_local": ("<= 1.5", lambda v: v <= 1.5),
    "hep.loopback.davfed_warm_vs_local": ("<= 1.2", lambda v: v <= 1.2),
    "hep.wan.davfed_warm_vs_local": ("<= 1.2", lambda v: v <= 1.2),
}


def _get(d: dict[str, Any], *path: str) -> float | None:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return float(d) if isinstance(d, int | float) and not isinstance(d, bool) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def rep_ratios(rep: dict[str, Any]) -> dict[str, float]:
    """The ratios of one repetition (flat names; only those whose rows were measured)."""
    lb: dict[str, Any] = rep.get("loopback", {})
    wan: dict[str, Any] = rep.get("wan", {})
    bare: dict[str, Any] = wan.get("bare_http", {})
    r: dict[str, float | None] = {
        "loopback_cold_vs_curl": _ratio(_get(lb, "davfed_cold", "mb_s"), _get(lb, "curl", "mb_s")),
        "warm_vs_disk": _ratio(_get(lb, "davfed_warm", "mb_s"), _get(lb, "disk_blocks", "mb_s")),
        "warm_pagecache_vs_disk": _ratio(
            _get(lb, "davfed_warm_pagecache", "mb_s"), _get(lb, "disk_blocks", "mb_s")
        ),
        "rclone_warm_vs_disk": _ratio(
            _get(lb, "rclone_warm", "mb_s"), _get(lb, "disk_blocks", "mb_s")
        ),
        "wan_cold_vs_curl": _ratio(_get(wan, "davfed_cold", "mb_s"), _get(wan, "curl", "mb_s")),
        "readers16_fetch_ratio": _get(lb, "davfed_readers", "fetch_ratio"),
        "rss_5g_peak_mb": _get(rep, "rss_5g", "rss_peak_mb"),
    }
    for row, key in (
        ("cold", "mb_s"), ("warm", "mb_s"), ("warm_pagecache", "mb_s"),
        ("random_cold", "reads_per_s"), ("random_warm", "reads_per_s"),
    ):  # fmt: skip
        r[f"vs_rclone.loopback_{row}"] = _ratio(
            _get(lb, f"davfed_{row}", key), _get(lb, f"rclone_{row}", key)
        )
    r["vs_rclone.loopback_readers"] = _ratio(
        _get(lb, "rclone_readers", "seconds"), _get(lb, "davfed_readers", "seconds")
    )
    r["vs_rclone.wan_cold"] = _ratio(
        _get(wan, "davfed_cold", "mb_s"), _get(wan, "rclone_cold", "mb_s")
    )
    r["vs_rclone.wan_random_cold"] = _ratio(
        _get(wan, "davfed_random_cold", "reads_per_s"),
        _get(wan, "rclone_random_cold", "reads_per_s"),
    )
    for which in ("first", "later"):
        r[f"vs_rclone.wan_ttfb_{which}"] = _ratio(
            _get(wan, f"rclone_ttfb_{which}_ms"), _get(wan, f"davfed_ttfb_{which}_ms")
        )
        r[f"vs_bare.wan_ttfb_{which}"] = _ratio(
            _get(bare, f"ttfb_{which}_ms"), _get(wan, f"davfed_ttfb_{which}_ms")
        )
    r["vs_bare.wan_cold_vs_parallel_gets"] = _ratio(
        _get(wan, "davfed_cold", "mb_s"), _get(bare, "parallel_mb_s")
    )
    r["vs_bare.wan_random_cold"] = _ratio(
        _get(wan, "davfed_random_cold", "reads_per_s"), _get(bare, "random_reads_per_s")
    )
    fetch: list[float] = []
    for where, hep in rep.get("hep", {}).items():
        for tool in ("davfed", "rclone"):
            for state in ("cold", "warm"):
                r[f"hep.{where}.{tool}_{state}_vs_local"] = _get(hep, f"{tool}_{state}", "vs_local")
            r[f"hep.{where}.{tool}_fetch_ratio"] = _get(hep, f"{tool}_cold", "fetch_ratio")
            r[f"hep.{where}.{tool}_cold_s"] = _get(hep, f"{tool}_cold", "seconds")
        r[f"hep.{where}.vs_rclone_cold"] = _ratio(
            _get(hep, "rclone_cold", "seconds"), _get(hep, "davfed_cold", "seconds")
        )
        value = _get(hep, "davfed_cold", "fetch_ratio")
        if value is not None:
            fetch.append(value)
    if fetch:
        r["hep.fetch_ratio_max"] = max(fetch)
    return {k: v for k, v in r.items() if v is not None}


def cpu_rows(rep: dict[str, Any]) -> dict[str, float]:
    """CPU s/GiB of every davfed and rclone row of one repetition."""
    found: dict[str, float] = {}
    groups: list[tuple[str, dict[str, Any]]] = [
        ("loopback", rep.get("loopback", {})),
        ("wan", rep.get("wan", {})),
        ("", {"rss_5g": rep.get("rss_5g")}),
    ]
    for group, rows in groups:
        for name, item in rows.items():
            if isinstance(item, dict) and item.get("cpu_s_per_gib") is not None:
                found[f"{group}.{name}".lstrip(".")] = float(item["cpu_s_per_gib"])
    return found


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "values": values,
    }


def aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers of the same place in every repetition -> median, min, max (recursively)."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for rep in reps:
        keys += [k for k in rep if k not in keys]
    for key in keys:
        values = [rep[key] for rep in reps if key in rep]
        if all(isinstance(v, dict) for v in values):
            out[key] = aggregate(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = spread([float(v) for v in values])
        else:
            out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def summarize(results: dict[str, Any]) -> None:
    """Add ``summary``, ``ratios``, ``cpu_s_per_gib`` and ``targets`` to ``results``."""
    reps: list[dict[str, Any]] = results.get("reps", [])
    for rep in reps:
        rep["ratios"] = rep_ratios(rep)
        rep["cpu_s_per_gib"] = cpu_rows(rep)
    results["summary"] = aggregate(
        [{k: v for k, v in rep.items() if k != "ratios"} for rep in reps]
    )
    ratios = aggregate([rep["ratios"] for rep in reps])
    results["ratios"] = ratios
    results["cpu_s_per_gib"] = aggregate([rep["cpu_s_per_gib"] for rep in reps])
    figures = {k: v["median"] for k, v in ratios.items() if isinstance(v, dict)}
    cold = [rep["cpu_s_per_gib"]["loopback.davfed_cold"] for rep in reps
            if "loopback.davfed_cold" in rep["cpu_s_per_gib"]]  # fmt: skip
    if cold:
        figures["cold_cpu_s_per_gib_max"] = max(cold)
        figures["cold_cpu_max_over_min"] = round(max(cold) / min(cold), 3) if min(cold) else 99.0
    if "hep.fetch_ratio_max" in ratios:
        figures["hep.fetch_ratio_max"] = ratios["hep.fetch_ratio_max"]["max"]
    checks: dict[str, dict[str, Any]] = {}
    for name, (target, ok) in TARGETS.items():
        if name in figures:
            checks[name] = {"value": figures[name], "target": target, "pass": ok(figures[name])}
    results["targets"] = checks


# --- the table -----------------------------------------------------------------------------


def fmt(stat: Any, unit: str = "") -> str:
    """``median (min-max) unit`` of an aggregated figure."""
    if not isinstance(stat, dict) or "median" not in stat:
        return "-"
    med, lo, hi = stat["median"], stat["min"], stat["max"]
    if len(stat["values"]) == 1:
        return f"{med:,.1f} {unit}".rstrip()
    return f"{med:,.1f} ({lo:,.1f}-{hi:,.1f}) {unit}".rstrip()


def table(results: dict[str, Any]) -> str:
    s: dict[str, Any] = results.get("summary", {})
    lb: dict[str, Any] = s.get("loopback", {})
    wan: dict[str, Any] = s.get("wan", {})
    lines: list[str] = [f"{len(results.get('reps', []))} repetition(s): median (min-max)"]

    def extra(item: Any) -> str:
        if not isinstance(item, dict):
            return ""
        bits = []
        if "cpu_s_per_gib" in item:
            bits.append(f"cpu {fmt(item['cpu_s_per_gib'], 's/GiB')}")
        elif "cpu_s" in item:
            bits.append(f"cpu {fmt(item['cpu_s'], 's')}")
        if "rss_peak_mb" in item:
            bits.append(f"rss {item['rss_peak_mb']['max']:.0f} MB")
        if "fetch_ratio" in item:
            bits.append(f"fetched {fmt(item['fetch_ratio'], 'x')}")
        elif "bytes_fetched" in item:
            bits.append(f"fetched {human(item['bytes_fetched']['median'])}")
        if "all_correct" in item:
            bits.append("sha256 ok" if item["all_correct"] is True else "WRONG BYTES")
        return ", ".join(bits)

    def row(label: str, d: dict[str, Any], key: str, field: str, unit: str) -> None:
        if key in d:
            item = d[key]
            stat = item.get(field) if field else item
            lines.append(f"  {label:<40} {fmt(stat, unit):>32}   {extra(item)}")

    lines.append(f"LOOPBACK ({human(results.get('file_size', 0))} file)")
    row("curl -o /dev/null (network limit)", lb, "curl", "mb_s", "MB/s")
    row("block files read from disk", lb, "disk_blocks", "mb_s", "MB/s")
    for tool in ("davfed", "rclone"):
        row(f"{tool} cold sequential", lb, f"{tool}_cold", "mb_s", "MB/s")
        row(f"{tool} warm (page cache dropped)", lb, f"{tool}_warm", "mb_s", "MB/s")
        row(f"{tool} warm (page cache kept)", lb, f"{tool}_warm_pagecache", "mb_s", "MB/s")
        row(f"{tool} random 64 KiB cold", lb, f"{tool}_random_cold", "reads_per_s", "/s")
        row(f"{tool} random 64 KiB warm", lb, f"{tool}_random_warm", "reads_per_s", "/s")
        row(f"{tool} concurrent readers, one cold file", lb, f"{tool}_readers", "file_mb_s", "MB/s")
    row("davfed 5-file input set (5 readers)", s, "rss_5g", "mb_s", "MB/s")
    if wan:
        lines.append(f"WAN ({2 * WAN_DELAY_MS} ms RTT, {wan.get('rate')}, {wan.get('method')})")
        row("curl -o /dev/null (one TCP stream)", wan, "curl", "mb_s", "MB/s")
        bare = wan.get("bare_http", {})
        row("bare HTTP, parallel ranges (link limit)", bare, "parallel_mb_s", "", "MB/s")
        row("bare HTTP, 302 + new connection + 1 MiB", bare, "ttfb_first_ms", "", "ms")
        row("bare HTTP, 302 + kept-alive 1 MiB", bare, "ttfb_later_ms", "", "ms")
        row("bare HTTP, random 64 KiB GETs", bare, "random_reads_per_s", "", "/s")
        for tool in ("davfed", "rclone"):
            row(f"{tool} cold sequential", wan, f"{tool}_cold", "mb_s", "MB/s")
            row(f"{tool} time to first MiB, first file", wan, f"{tool}_ttfb_first_ms", "", "ms")
            row(f"{tool} time to first MiB, later file", wan, f"{tool}_ttfb_later_ms", "", "ms")
            row(f"{tool} random 64 KiB cold", wan, f"{tool}_random_cold", "reads_per_s", "/s")
    for where, hep in s.get("hep", {}).items():
        size = hep.get("file_bytes", {}).get("median", 0)
        lines.append(f"HEP JOB, {where} ({human(size)} ROOT file; job seconds)")
        row("local file (page cache dropped)", hep, "local", "seconds", "s")
        row("local file (page cache kept)", hep, "local_pagecache", "seconds", "s")
        for tool in ("davfed", "rclone"):
            for state in ("cold", "warm"):
                if f"{tool}_{state}" in hep:
                    item = hep[f"{tool}_{state}"]
                    bits = [f"{fmt(item.get('vs_local'), 'x local')}"]
                    if "fetch_ratio" in item:
                        bits.append(f"fetched {fmt(item['fetch_ratio'], 'x file')}")
                    if "daemon_cpu_s" in item:
                        bits.append(f"daemon cpu {fmt(item['daemon_cpu_s'], 's')}")
                    label = f"{tool} {state}"
                    lines.append(
                        f"  {label:<40} {fmt(item['seconds'], 's'):>32}   {', '.join(bits)}"
                    )
    lines.append("RATIOS (per repetition, then median (min-max))")
    for name, stat in results.get("ratios", {}).items():
        lines.append(f"  {name:<44} {fmt(stat, 'x'):>28}")
    lines.append("TARGETS (issues 5 and 12)")
    for name, c in results.get("targets", {}).items():
        verdict = "ok" if c["pass"] else "MISS"
        lines.append(f"  {name:<38} {c['value']:>10,.3f}   target {c['target']:<30} {verdict}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
