"""``davfed`` and ``mount.davfed``: the entry points; the subcommands are modules beside it.

Owns: dispatching to the subcommand modules (each imported only when it runs, so that the
mount helper loads nothing it does not need), ``--help``, ``--version``, and the
top-level error guard (``guard``: a user error is one line ``davfed: <message>`` on
stderr, never a traceback). Exit statuses: ``exitcodes.Exit``.

Helper mode: when ``argv[0]``'s name starts with ``mount.`` (the ``/sbin/mount.davfed``
and ``/sbin/mount.fuse.davfed`` symlinks), or when the first argument is a URL (libfuse's
``mount.fuse`` runs ``davfed URL DIR -o ...``). :func:`helper_main` stays importable
from here: ``bin/mount.davfed`` and installed launcher scripts call it by this name.
Must not import at module level: pyfuse3, trio, httpx, or a subcommand but ``mount``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from davfed_fuse.cli.guard import guard
from davfed_fuse.cli.mount import helper_main
from davfed_fuse.cli.usage import USAGE
from davfed_fuse.exitcodes import Exit

__all__ = ["USAGE", "helper_main", "main"]


COMMANDS = (
    "mount",
    "umount",
    "config",
    "install-helper",
    "prefetch",
    "cache",
    "verify",
    "testfed",
    "status",
    "ctl",
)


def command(name: str) -> Callable[[Sequence[str]], int]:
    """The ``main`` of subcommand ``name`` (one of :data:`COMMANDS`), imported now."""
    # One import statement per command: greppable, type-checked, seen by the layer test.
    if name == "mount":
        from davfed_fuse.cli import mount

        return mount.main
    if name == "umount":
        from davfed_fuse.cli import umount

        return umount.main
    if name == "config":
        from davfed_fuse.cli import config

        return config.main
    if name == "install-helper":
        from davfed_fuse.cli import installhelper

        return installhelper.main
    if name == "prefetch":
        from davfed_fuse.cli import prefetch

        return prefetch.main
    if name == "cache":
        from davfed_fuse.cli import cache

        return cache.main
    if name == "verify":
        from davfed_fuse.cli import verify

        return verify.main
    if name == "status":
        from davfed_fuse.cli import status

        return status.main
    if name == "ctl":
        from davfed_fuse.cli import ctl

        return ctl.main
    if name == "testfed":
        from davfed_fuse.cli import testfed

        return testfed.main
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]).startswith("mount."):
        return helper_main(sys.argv)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["help"] and len(args) > 1:
        from davfed_fuse.cli import help

        return help.main(args[1:])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return Exit.OK if args else Exit.USAGE
    if args[0] in ("-V", "--version"):
        from davfed_fuse.cli.version import version_text

        print(version_text())
        return Exit.OK
    if "://" in args[0]:  # libfuse's mount.fuse: `davfed URL DIR -o OPTS`
        return helper_main(["davfed", *args])
    if args[0] not in COMMANDS:
        print(f"davfed: unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return Exit.USAGE
    run = command(args[0])
    return guard(lambda: run(args[1:]))
