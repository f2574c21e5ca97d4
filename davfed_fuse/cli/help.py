"""``davfed help [options|man]``: the documentation that ships with the package.

Owns: the text of the option table (``davfed help options``) and the manual page
davfed(8) (``davfed help man``, which ``install-helper`` writes to
``MANDIR/man8/davfed.8``). Both are rendered from ``optiontable.OPTIONS`` and
``Config``'s defaults, the source ``docs/options.md`` is checked against, so the
installed docs cannot drift from the code.
Must not import: pyfuse3, trio, httpx.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Iterator, Sequence

from davfed_fuse import __version__
from davfed_fuse.cli.usage import USAGE
from davfed_fuse.config import SYSTEM_CACHE_DIR, Config
from davfed_fuse.exitcodes import Exit
from davfed_fuse.optiontable import DROPPED_PREFIXES, OPTIONS, Kind, Rule
from davfed_fuse.optionvalues import format_size

HELP_USAGE = "usage: davfed help [options|man]\n"

#: Section titles, in the order they appear, for each kind of option.
SECTIONS = (
    (Kind.VALUE, "davfed's own options (key=value)"),
    (Kind.FLAG, "flags"),
    (Kind.DROP, "mount(8), fstab and systemd words: accepted and dropped"),
    (Kind.IGNORE, "ignored with a warning"),
    (Kind.REJECT, "rejected, even with -s"),
)

#: Defaults that depend on who mounts, shown in words.
_DEFAULT_WORDS = {
    "uid": "the mounting user",
    "gid": "the mounting user's group",
    "cache_dir": str(SYSTEM_CACHE_DIR),
}
_SIZES = {"cache_size", "block_size", "readahead"}

FSTAB_LINE = (
    "https://dynafed.example/belle /dynafed/belle davfed "
    "ro,_netdev,nofail,allow_other,x-systemd.mount-timeout=120 0 0"
)


def default_of(rule: Rule) -> str:
    """What the option's field holds when it is not given ("" if nothing to say)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if rule.kind is Kind.FLAG:
        on = all(fields[name].default == value for name, value in rule.sets.items())
        return "on" if on and "(default)" not in rule.help else ""
    if rule.kind is not Kind.VALUE or rule.field is None:
        return ""
    if rule.field in _DEFAULT_WORDS:
        return _DEFAULT_WORDS[rule.field]
    value = fields[rule.field].default
    if value is None or value is dataclasses.MISSING:
        return "none"
    if rule.field in _SIZES and isinstance(value, int):
        return format_size(value)
    if rule.field == "umask" and isinstance(value, int):
        return f"{value:03o}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, str) else str(value)


def rows(kind: Kind) -> Iterator[tuple[str, str, str]]:
    """(option, default, meaning) of every option of ``kind``, in table order."""
    for name, rule in OPTIONS.items():
        if rule.kind is kind:
            spelled = f"{name}=VALUE" if kind is Kind.VALUE else name
            yield spelled, default_of(rule), rule.help
    if kind is Kind.DROP:
        for prefix in DROPPED_PREFIXES:
            yield f"{prefix}...", "", "comments and x-systemd.*: for mount(8) and systemd"
    if kind is Kind.VALUE:
        yield "env.NAME=VALUE", "none", "an environment variable for the daemon"


def options_text(width: int = 100) -> str:
    """The option table as plain text: ``davfed help options``."""
    out = [
        f"davfed {__version__} mount options (-o OPTS, the 4th field of fstab; "
        "'-' and '_' are the same)",
        "",
    ]
    for kind, title in SECTIONS:
        table = list(rows(kind))
        name_width = max(len(name) for name, _, _ in table) + 2
        out.append(f"{title}:")
        for name, default, meaning in table:
            text = f"{meaning} [default: {default}]" if default else meaning
            lines = textwrap.wrap(text, width - name_width - 2) or [""]
            out.append(f"  {name:<{name_width}}{lines[0]}")
            out.extend(" " * (name_width + 2) + line for line in lines[1:])
        out.append("")
    out.append("Sizes: 4096, 64K, 512M, 20G, 1T (powers of 1024). Times: seconds (30, 2.5s).")
    out.append("The manual: man 8 davfed (installed by davfed install-helper).")
    return "\n".join(out) + "\n"


def _roff(text: str) -> str:
    """``text`` safe as roff: backslashes, dashes and a leading dot or quote escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def man_page() -> str:
    """davfed(8) in roff (man(7) macros)."""
    out = [
        f'.TH DAVFED 8 "" "davfed {__version__}" "System Administration"',
        ".SH NAME",
        "davfed, mount.davfed \\- mount a Dynafed storage federation read\\-only (FUSE)",
        ".SH SYNOPSIS",
        ".nf",
        *(_roff(line) for line in USAGE.splitlines() if line.strip()),
        "",
        "mount \\-t davfed [\\-o OPTIONS] URL MOUNTPOINT",
        "mount.davfed URL MOUNTPOINT [\\-sfnv] [\\-o OPTIONS]... [\\-t davfed]",
        ".fi",
        ".SH DESCRIPTION",
        "davfed mounts the federation at URL (http:// or https://) on MOUNTPOINT. It lists "
        "directories with PROPFIND, follows the federation's redirects to the storage "
        "endpoints and reads with ranged GETs through a block cache on disk. "
        "The mount is always read\\-only; writes fail with EROFS.",
        ".PP",
        "The mount helper returns once the mount is live. The kernel sees the URL as the "
        "source (fsname) and fuse.davfed as the type, so mount \\-a never mounts a line twice.",
        ".SH OPTIONS",
        "Options are separated by commas; \\(aq\\-\\(aq and \\(aq_\\(aq are the same in names; "
        "an unknown option is an error (a warning with \\-s); a bad value is always an error. "
        "Paths must be absolute. Sizes: 4096, 64K, 512M, 20G, 1T (powers of 1024). "
        "Times: seconds.",
    ]
    for kind, title in SECTIONS:
        out += [".SS " + _roff(title)]
        for name, default, meaning in rows(kind):
            text = f"{meaning} (default: {default})" if default else meaning
            out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(text)]
    out += [
        ".SH FSTAB",
        "_netdev is needed: systemd does not know that davfed is a network filesystem.",
        ".PP",
        ".nf",
        _roff(FSTAB_LINE),
        ".fi",
        ".SH SYSTEMD",
        "davfed install\\-helper writes /etc/systemd/system/davfed@.service: one instance per "
        "mountpoint (systemd\\-escape \\-\\-path), restarted while the federation is "
        "unreachable. Its settings come from /etc/davfed/INSTANCE.env "
        "(DAVFED_URL=, DAVFED_OPTIONS=).",
        ".SH FILES",
        ".TP",
        "/sbin/mount.davfed, /sbin/mount.fuse.davfed",
        "the mount(8) helper (davfed install\\-helper; removed with \\-\\-uninstall)",
        ".TP",
        _roff(str(SYSTEM_CACHE_DIR)),
        "the block cache of system mounts (mode 0700)",
        ".SH EXIT STATUS",
        "0 mounted (or already mounted), 1 usage error, 32 mount failure.",
        ".SH SEE ALSO",
        ".BR mount (8),",
        ".BR fstab (5),",
        ".BR fusermount3 (1),",
        ".BR systemd.mount (5)",
    ]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    """``davfed help [options|man]``."""
    args = list(argv)
    if args in ([], ["-h"], ["--help"]):
        print(USAGE, end="")
        return Exit.OK
    if args == ["options"]:
        sys.stdout.write(options_text())
        return Exit.OK
    if args == ["man"]:
        sys.stdout.write(man_page())
        return Exit.OK
    print(f"davfed help: unknown topic {' '.join(args)!r}\n{HELP_USAGE}", end="", file=sys.stderr)
    return Exit.USAGE
