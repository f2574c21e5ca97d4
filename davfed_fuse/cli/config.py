"""``davfed config show MOUNTPOINT|URL``: the options a mount uses and where each came from.

Owns: finding the other half of a mount from one of URL and MOUNTPOINT (the kernel's
mount table, then ``/etc/fstab``), printing the effective options with their origin
(``FILE:LINE``, ``-o``, ``default``), and never printing a secret (every value goes
through ``redaction.redact``).
Must not import: pyfuse3, trio, httpx, ``daemon``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.config import Config
from davfed_fuse.errors import UsageError
from davfed_fuse.exitcodes import Exit
from davfed_fuse.options import Triage, build_config, split_options
from davfed_fuse.optiontable import OPTIONS, Kind
from davfed_fuse.optionvalues import format_min_free, format_size
from davfed_fuse.redaction import redact, redact_url
from davfed_fuse.system.mounttable import read_mountinfo, unescape

FSTAB = Path("/etc/fstab")
FSTYPES = ("davfed", "fuse.davfed")
#: Config fields that are not options (set by the command line itself).
_NOT_OPTIONS = {"url", "mountpoint", "foreground", "extra_fuse_options", "env"}
_SIZES = {"cache_size", "block_size", "readahead"}


@dataclass(frozen=True, slots=True)
class FstabLine:
    origin: str  # /etc/fstab:LINE
    source: str
    target: str
    options: str


def parser() -> UsageParser:
    parser = UsageParser(
        prog="davfed config show",
        description="Print the options a mount of URL on MOUNTPOINT uses and where each "
        "came from: a configuration file and line, -o (or the fstab line), or the default. "
        "Give the URL, the MOUNTPOINT or both; the other is looked up in the mount table, "
        "then in /etc/fstab.",
        epilog="Configuration files: docs/config.md. Secrets are never printed.",
    )
    parser.add_argument("action", choices=["show"], help="what to do")
    parser.add_argument("targets", nargs="+", metavar="MOUNTPOINT|URL")
    parser.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTS", help="as for mount"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    return parser


def fstab_lines(path: Path = FSTAB) -> list[FstabLine]:
    """The davfed lines of an fstab file (``davfed`` or ``fuse.davfed``)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#") or fields[2] not in FSTYPES:
            continue
        options = fields[3] if len(fields) > 3 else ""
        out.append(FstabLine(f"{path}:{number}", unescape(fields[0]), unescape(fields[1]), options))
    return out


def resolve(
    targets: Sequence[str], fstab: Sequence[FstabLine]
) -> tuple[str, Path | None, FstabLine | None]:
    """URL, mountpoint (None if unknown) and the fstab line of the mount ``targets`` name."""
    urls = [t for t in targets if "://" in t]
    dirs = [Path(os.path.abspath(t)) for t in targets if "://" not in t]
    if len(urls) > 1 or len(dirs) > 1:
        raise UsageError("give at most one URL and one MOUNTPOINT")
    url = urls[0] if urls else None
    mountpoint = dirs[0] if dirs else None
    line = next(
        (
            f
            for f in fstab
            if (url is None or f.source.rstrip("/") == url.rstrip("/"))
            and (mountpoint is None or Path(os.path.abspath(f.target)) == mountpoint)
        ),
        None,
    )
    if url is None and mountpoint is not None:
        mounted = [m for m in read_mountinfo() if m.is_davfed and Path(m.mountpoint) == mountpoint]
        if mounted:
            url = mounted[-1].source
        elif line is not None:
            url = line.source
        else:
            raise UsageError(
                f"no davfed mount on {mountpoint} and no line for it in {FSTAB}; "
                "give the URL as well: davfed config show URL MOUNTPOINT"
            )
    assert url is not None
    if mountpoint is None and line is not None:
        mountpoint = Path(os.path.abspath(line.target))
    return url, mountpoint, line


def option_name(field: str) -> str:
    """The option that sets Config ``field`` (``config_file`` -> ``config``)."""
    for name, rule in OPTIONS.items():
        if rule.kind is Kind.VALUE and rule.field == field:
            return name
    return field


def format_value(field: str, value: object) -> str:
    """A Config value as it would be written in a file, secrets redacted."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif field in _SIZES and isinstance(value, int):
        text = format_size(value)
    elif field == "umask" and isinstance(value, int):
        text = f"{value:03o}"
    elif field == "cache_min_free" and isinstance(value, tuple):
        text = format_min_free(value)
    elif field == "log_level" and isinstance(value, str):
        text = value.lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return redact(text)


def effective(triage: Triage) -> list[tuple[str, str, str]]:
    """``(option, value, origin)`` of every option of the mount, in Config order."""
    config = triage.config
    rows = []
    for f in dataclasses.fields(Config):
        if f.name in _NOT_OPTIONS:
            continue
        origin = triage.origins.get(f.name, "default")
        rows.append((option_name(f.name), format_value(f.name, getattr(config, f.name)), origin))
    for name, value in config.env:
        rows.append((f"env.{name}", redact(value), triage.origins.get(f"env.{name}", "-o")))
    return rows


def main(argv: Sequence[str]) -> int:
    args = parser().parse_intermixed_args(list(argv))
    url, mountpoint, line = resolve(args.targets, fstab_lines())
    options = ([line.options] if line is not None else []) + list(args.options)
    for text in options:
        split_options(text)  # an unterminated quote is a usage error here, not later
    triage = build_config(url, mountpoint or "/", options, mountpoint_known=mountpoint is not None)
    rows = effective(triage)
    where = str(mountpoint) if mountpoint is not None else None
    if args.json:
        record = {
            "url": redact_url(url),
            "mountpoint": where,
            "files": [str(p) for p in triage.files],
            "fstab": line.origin if line is not None else None,
            "options": {name: {"value": value, "origin": origin} for name, value, origin in rows},
            "warnings": [redact(w) for w in triage.warnings],
        }
        json.dump(record, sys.stdout, indent=2)
        print()
        return Exit.OK
    print(f"# {redact_url(url)} on {where or '(no mountpoint: its sections do not apply)'}")
    files = ", ".join(str(p) for p in triage.files) or "none"
    print(f"# configuration files read, in order: {files}")
    if line is not None:
        print(f"# -o options from {line.origin}: {redact(line.options)}")
    for warning in triage.warnings:
        print(f"# warning: {redact(warning)}")
    width = max(len(f"{name} = {value}") for name, value, _ in rows)
    for name, value, origin in rows:
        print(f"{f'{name} = {value}':<{width}}  # {origin}")
    return Exit.OK
