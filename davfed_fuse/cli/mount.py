"""``davfed mount`` and the mount(8) helper ``mount.davfed``.

Owns: the two command lines that mount: ``davfed mount [-f] [-d] [-s] [-v] [-o OPTS]...
URL MOUNTPOINT`` and ``mount.davfed URL DIR [-sfnv] [-o OPTS]...`` (parsed by
``launch.parse_helper_args``), and the choice between serving in this process
(``-f``: the daemon, ``daemon.main``, imported only then) and starting the daemon in
the background through ``launch``.
Must not import at module level: pyfuse3, trio, httpx, ``daemon`` (the helper path runs
through here and forks: forking inside trio is unsafe).

Helper mode: when ``argv[0]``'s name starts with ``mount.`` (the ``/sbin/mount.davfed``
and ``/sbin/mount.fuse.davfed`` symlinks), or when the first argument is a URL
(libfuse's ``mount.fuse`` runs ``davfed URL DIR -o ...``); ``cli.main`` decides.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence

from davfed_fuse.cli.guard import guard, one_line, setup_cli_logging, warn
from davfed_fuse.cli.launch import (
    HELPER_USAGE,
    AlreadyMounted,
    check_mountpoint,
    daemon_command,
    launch,
    parse_helper_args,
)
from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import DavfedError, MountError, UsageError
from davfed_fuse.exitcodes import Exit
from davfed_fuse.options import Triage, build_config

log = logging.getLogger(__name__)


def parser() -> UsageParser:
    parser = UsageParser(
        prog="davfed mount",
        description="Mount the Dynafed federation at URL read-only on MOUNTPOINT. Without "
        "-f, davfed starts itself in the background and returns once the mount is live.",
        epilog="Options: davfed help options. Exit status: 0 mounted, 1 usage error, "
        "32 mount failure.",
    )
    parser.add_argument("url", metavar="URL", help="the federation, http:// or https://")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    parser.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging; implies -f")
    parser.add_argument("-s", "--sloppy", action="store_true", help="unknown options only warn")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more verbose logs")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated mount options (repeatable)",
    )
    parser.add_argument(
        "--ready-fd",
        type=int,
        metavar="N",
        help="with -f: write READY or ERROR <message> to file descriptor N (for the launcher)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``davfed mount``: serve with ``-f``, else start the daemon and wait until it is live."""
    args = parser().parse_intermixed_args(list(argv))
    ready_fd: int | None = args.ready_fd
    try:
        if ready_fd is not None:
            if not (args.foreground or args.debug):
                raise UsageError("--ready-fd needs -f")
            os.fstat(ready_fd)
    except OSError:
        raise UsageError(f"--ready-fd {ready_fd} is not an open file descriptor") from None
    try:
        triage = build_config(
            args.url,
            args.mountpoint,
            args.options,
            sloppy=args.sloppy,
            verbose=args.verbose,
            foreground=args.foreground,
            debug=args.debug,
        )
        if not triage.config.foreground:
            return start(triage, verbose=args.verbose)
        return serve(triage, ready_fd)
    except DavfedError as exc:
        if ready_fd is not None:
            _report(ready_fd, f"ERROR {one_line(exc)}")
        raise


def serve(triage: Triage, ready_fd: int | None) -> int:
    """``davfed mount -f``: run the daemon in this process."""
    from davfed_fuse.logs import setup_logging

    config = triage.config
    os.environ.update(config.env)
    setup_logging(config)
    for warning in triage.warnings:
        log.warning("%s", warning)
    try:
        check_mountpoint(config)
    except AlreadyMounted as exc:
        raise MountError(f"{exc}; not mounting it twice") from None
    from davfed_fuse.daemon import main as daemon

    log.info("mounting %s on %s", config.url, config.mountpoint)
    return daemon.run(config, ready_fd)


def start(triage: Triage, *, verbose: int, dry_run: bool = False) -> int:
    """Helper and ``davfed mount`` without ``-f``: check, start the daemon, wait."""
    setup_cli_logging(verbose)
    warn(triage.warnings)
    try:
        check_mountpoint(triage.config, dry_run=dry_run)
    except AlreadyMounted as exc:
        print(f"davfed: {exc}", file=sys.stderr)
        return Exit.OK
    if dry_run:
        print(shlex.join(daemon_command(triage, "FD")))
        return Exit.OK
    return launch(triage)


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


# --- the mount(8) helper -------------------------------------------------------


def helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.davfed URL DIR [-sfnv] [-o OPTS]...``; ``argv`` includes ``argv[0]``."""
    argv = list(sys.argv if argv is None else argv)
    return guard(lambda: _helper(argv[1:]))


def _helper(argv: Sequence[str]) -> int:
    args = parse_helper_args(argv)
    if args.help:
        print(HELPER_USAGE, end="")
        return Exit.OK
    if args.version:
        from davfed_fuse.cli.version import version_text

        print(version_text())
        return Exit.OK
    triage = build_config(
        args.url, args.mountpoint, args.options, sloppy=args.sloppy, verbose=args.verbose
    )
    return start(triage, verbose=args.verbose, dry_run=args.fake)
