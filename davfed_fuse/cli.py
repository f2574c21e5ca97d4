"""``davfed``: the command line.

Owns: argument parsing for every subcommand, logging set-up, exit codes
(0 success, 1 usage error, 32 mount failure). Each subcommand lives in its own
module; this file only dispatches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from davfed_fuse import __version__

USAGE = """\
usage: davfed COMMAND [ARGS...]

commands:
  mount [-f] [-d] [-o OPTS] URL MOUNTPOINT   mount a federation (the daemon)
  umount MOUNTPOINT                          unmount it
  testfed DATA_DIR --port PORT [...]         serve DATA_DIR as a test federation
  install-helper                             install /sbin/mount.davfed for mount(8)

  davfed COMMAND --help for a command's options; davfed --version
"""


def version_text() -> str:
    """davfed's version and those of the stack under it."""
    import httpx
    import trio

    lines = [f"davfed {__version__}"]
    try:
        import pyfuse3

        lines.append(f"pyfuse3 {getattr(pyfuse3, '__version__', '?')}")
    except ImportError as exc:  # pragma: no cover - pyfuse3 is a hard dependency
        lines.append(f"pyfuse3 unavailable ({exc})")
    from davfed_fuse.libfuse import libfuse_version

    lines.append(f"libfuse {libfuse_version()}")
    lines.append(f"trio {trio.__version__}")
    lines.append(f"httpx {httpx.__version__}")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines)


def _testfed(argv: Sequence[str]) -> int:
    from davfed_fuse.testfed.cli import main as testfed_main

    return testfed_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "testfed": _testfed,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 1
    if args[0] in ("-V", "--version"):
        print(version_text())
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"davfed: unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 1
    return command(args[1:])
