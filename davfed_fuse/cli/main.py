"""``davfed`` and ``mount.davfed``: the command line.

Owns: argument parsing for every subcommand, logging set-up, exit codes
(0 success, 1 usage error, 32 mount failure) and the rule that a user error
is one line ``davfed: <message>`` on stderr, never a traceback. The work is
done elsewhere: ``options`` (option triage), ``launcher`` (helper and
daemonizing), ``mounts`` (mount table), ``mount`` (the daemon, imported only
when it runs in this process).

Helper mode: when ``argv[0]``'s name starts with ``mount.`` (the
``/sbin/mount.davfed`` and ``/sbin/mount.fuse.davfed`` symlinks), or when the
first argument is a URL (libfuse's ``mount.fuse`` runs ``davfed URL DIR -o ...``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from davfed_fuse import __version__
from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import DavfedError, MountError, UsageError

if TYPE_CHECKING:
    from davfed_fuse.options import Triage

log = logging.getLogger("davfed_fuse.cli.main")

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_MOUNT = 32

USAGE = """\
usage: davfed COMMAND [ARGS...]

commands:
  mount [-f] [-d] [-s] [-v] [-o OPTS]... URL MOUNTPOINT
                                 mount a federation read-only (returns once live;
                                 -f serves it in the foreground)
  umount [-l] MOUNTPOINT         unmount it
  prefetch PATH... [-r DIR]... [--jobs N] [--quiet] [--json]
                                 warm the cache: read files through a davfed mount
  cache stats|clean [--cache-dir DIR] [--json]
                                 the block cache's size and hit rate; empty it
  verify [--algorithm adler32|md5] PATH...
                                 compare files read through davfed with the
                                 federation's checksum (Want-Digest)
  testfed DATA_DIR --port PORT [...]
                                 serve DATA_DIR as a test federation
  install-helper [--prefix /sbin] [--uninstall]
                                 install /sbin/mount.davfed for mount(8) and fstab

  davfed COMMAND --help for a command's options; davfed --version
  mount options: docs/options.md
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
    from davfed_fuse.system.libfuse import libfuse_version

    lines.append(f"libfuse {libfuse_version()}")
    lines.append(f"trio {trio.__version__}")
    lines.append(f"httpx {httpx.__version__}")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines)


def _setup_cli_logging(verbose: int = 0) -> None:
    """Warnings of the short-lived commands go to stderr as ``davfed: ...``."""
    from davfed_fuse.logs import RedactionFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(logging.Formatter("davfed: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        log.warning("warning: %s", warning)


# --- davfed mount ------------------------------------------------------------------


def _mount_parser() -> UsageParser:
    parser = UsageParser(
        prog="davfed mount",
        description="Mount the Dynafed federation at URL read-only on MOUNTPOINT. Without "
        "-f, davfed starts itself in the background and returns once the mount is live.",
        epilog="Options: docs/options.md. Exit status: 0 mounted, 1 usage error, 32 mount failure.",
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


def _mount(argv: Sequence[str]) -> int:
    from davfed_fuse.options import build_config

    args = _mount_parser().parse_intermixed_args(list(argv))
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
            return _launch(triage, verbose=args.verbose)
        return _serve(triage, ready_fd)
    except DavfedError as exc:
        if ready_fd is not None:
            _report(ready_fd, f"ERROR {_one_line(exc)}")
        raise


def _serve(triage: Triage, ready_fd: int | None) -> int:
    """``davfed mount -f``: run the daemon in this process."""
    from davfed_fuse.cli.launch import AlreadyMounted, check_mountpoint
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
    from davfed_fuse.daemon import main as mount

    log.info("mounting %s on %s", config.url, config.mountpoint)
    return mount.run(config, ready_fd)


def _launch(triage: Triage, *, verbose: int, dry_run: bool = False) -> int:
    """Helper and ``davfed mount`` without ``-f``: check, start the daemon, wait."""
    from davfed_fuse.cli.launch import AlreadyMounted, check_mountpoint, daemon_command, launch

    _setup_cli_logging(verbose)
    _warn(triage.warnings)
    try:
        check_mountpoint(triage.config, dry_run=dry_run)
    except AlreadyMounted as exc:
        print(f"davfed: {exc}", file=sys.stderr)
        return EXIT_OK
    if dry_run:
        print(shlex.join(daemon_command(triage, "FD")))
        return EXIT_OK
    return launch(triage)


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the mount(8) helper -------------------------------------------------------


def helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.davfed URL DIR [-sfnv] [-o OPTS]...``; ``argv`` includes ``argv[0]``."""
    argv = list(sys.argv if argv is None else argv)
    return _guard(lambda: _helper(argv[1:]))


def _helper(argv: Sequence[str]) -> int:
    from davfed_fuse.cli.launch import HELPER_USAGE, parse_helper_args
    from davfed_fuse.options import build_config

    args = parse_helper_args(argv)
    if args.help:
        print(HELPER_USAGE, end="")
        return EXIT_OK
    if args.version:
        print(version_text())
        return EXIT_OK
    triage = build_config(
        args.url, args.mountpoint, args.options, sloppy=args.sloppy, verbose=args.verbose
    )
    return _launch(triage, verbose=args.verbose, dry_run=args.fake)


# --- davfed umount -----------------------------------------------------------------


def _umount(argv: Sequence[str]) -> int:
    from davfed_fuse.system.mounttable import find_mount, is_stale, unmount

    parser = UsageParser(prog="davfed umount", description="Unmount a davfed mount.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument(
        "-l",
        "-z",
        "--lazy",
        action="store_true",
        help="detach now even if files are open (umount -l / fusermount3 -uz)",
    )
    args = parser.parse_args(list(argv))
    _setup_cli_logging()
    path = os.path.abspath(args.mountpoint)
    entry = find_mount(path)
    if entry is None:
        raise MountError(f"{path} is not mounted")
    if not entry.is_davfed:
        raise MountError(f"{path} is a {entry.fstype} mount, not davfed; use umount(8)")
    unmount(path, lazy=args.lazy or is_stale(path))
    return EXIT_OK


# --- davfed install-helper ---------------------------------------------------------

HELPER_NAMES = ("mount.davfed", "mount.fuse.davfed")
_LAUNCHER_CODE = (
    "import sys; from davfed_fuse.cli.main import helper_main; sys.exit(helper_main(sys.argv[1:]))"
)


def launcher_script_path() -> Path:
    """Where ``install-helper`` writes the script the symlinks point to."""
    if sys.prefix != sys.base_prefix:  # a virtualenv: keep it next to its python
        return Path(sys.prefix) / "bin" / "mount.davfed"
    return Path("/usr/local/lib/davfed/mount.davfed")


def launcher_script() -> str:
    """A shell script running this Python's davfed as the mount helper.

    ``-I`` keeps the caller's cwd and PYTHON* variables out of a root process;
    ``"$0"`` keeps the symlink's name, which selects helper mode.
    """
    return (
        "#!/bin/sh\n"
        "# The mount(8) helper of davfed, written by `davfed install-helper`.\n"
        f'exec {shlex.quote(sys.executable)} -I -c {shlex.quote(_LAUNCHER_CODE)} "$0" "$@"\n'
    )


def _install_helper(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed install-helper",
        description="Link PREFIX/mount.davfed and PREFIX/mount.fuse.davfed to a launcher "
        "running this installation, so that `mount -t davfed` and fstab lines of type "
        "davfed work. mount(8) looks only in /sbin (/usr/sbin on usr-merged systems).",
    )
    parser.add_argument("--prefix", default="/sbin", type=Path, help="default: /sbin")
    parser.add_argument("--uninstall", action="store_true", help="remove the links")
    parser.add_argument(
        "--script",
        type=Path,
        default=launcher_script_path(),
        help="where to write the launcher script the links point to (default: %(default)s)",
    )
    args = parser.parse_args(list(argv))
    prefix: Path = args.prefix.resolve()
    script: Path = args.script.absolute()
    try:
        if args.uninstall:
            return _uninstall(prefix, script)
        text = launcher_script()
        if not script.is_file() or script.read_text() != text:
            script.parent.mkdir(parents=True, exist_ok=True)
            tmp = script.with_name(script.name + ".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(script)
            print(f"wrote {script}")
        for name in HELPER_NAMES:
            link = prefix / name
            if link.is_symlink() and os.readlink(link) == str(script):
                print(f"{link} -> {script} (already installed)")
                continue
            if link.exists() and not link.is_symlink():
                raise MountError(f"{link} exists and is not a symlink; remove it first")
            if link.is_symlink():
                print(f"replacing {link} -> {os.readlink(link)}")
                link.unlink()
            link.symlink_to(script)
            print(f"{link} -> {script}")
    except OSError as exc:
        raise MountError(f"install-helper: {exc}") from None
    return EXIT_OK


def _uninstall(prefix: Path, script: Path) -> int:
    for name in HELPER_NAMES:
        link = prefix / name
        if link.is_symlink() and os.readlink(link) == str(script):
            link.unlink()
            print(f"removed {link}")
        elif link.exists() or link.is_symlink():
            print(f"davfed: leaving {link}: not installed from here", file=sys.stderr)
    if script.is_file():
        script.unlink()
        print(f"removed {script}")
    return EXIT_OK


# --- davfed prefetch, davfed cache ---------------------------------------------------


def _prefetch(argv: Sequence[str]) -> int:
    from davfed_fuse.cli import prefetch

    parser = UsageParser(
        prog="davfed prefetch",
        description="Warm davfed's block cache for a job's inputs: read the files through "
        "the davfed mount they are on (several at once), so the job finds them on local "
        "disk. A progress bar on a terminal, a line every few seconds otherwise.",
        epilog="Exit status: 0 all files read, 1 usage error or a path outside a davfed "
        "mount, 2 some file could not be read. docs/prefetch.md",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files in a davfed mount")
    parser.add_argument(
        "-r",
        "--recursive",
        dest="directories",
        action="append",
        default=[],
        metavar="DIR",
        help="every file under DIR (repeatable)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=prefetch.DEFAULT_JOBS,
        metavar="N",
        help="files read in parallel (default: %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="report failures only")
    parser.add_argument("--json", action="store_true", help="JSON records on stdout")
    parser.add_argument(
        "--interval",
        type=float,
        default=prefetch.DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between progress lines without a terminal (default: %(default)s)",
    )
    args = parser.parse_intermixed_args(list(argv))
    return prefetch.run(
        args.paths,
        args.directories,
        jobs=args.jobs,
        quiet=args.quiet,
        as_json=args.json,
        interval=args.interval,
    )


def _cache(argv: Sequence[str]) -> int:
    from davfed_fuse.cache import stats as cachestats
    from davfed_fuse.config import default_cache_dir

    parser = UsageParser(
        prog="davfed cache",
        description="stats: size, blocks, files, hits, misses, hit rate and bytes fetched of "
        "each federation's cache (works while mounted). clean: drop every cached block "
        "(refused while a daemon uses the cache).",
        epilog="Exit status: 0 done, 1 usage error or unreadable cache, "
        "32 clean refused (cache in use by a mount). docs/prefetch.md",
    )
    parser.add_argument("action", choices=["stats", "clean"])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="the mounts' cache_dir (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="stats as one JSON object")
    args = parser.parse_args(list(argv))
    if args.action == "stats":
        return cachestats.stats_command(args.cache_dir, as_json=args.json)
    return cachestats.clean_command(args.cache_dir, as_json=args.json)


# --- dispatch ----------------------------------------------------------------------


TESTFED_MISSING = (
    "the test federation is not installed: install davfed with its extra, "
    "pip install 'davfed[testfed]' (from a checkout: pip install '.[testfed]')"
)


def _testfed(argv: Sequence[str]) -> int:
    # Imported by name: the test federation is an optional extra (aiohttp and all).
    try:
        module = importlib.import_module("davfed_testfed.cli")
    except ImportError as exc:
        raise UsageError(f"{TESTFED_MISSING} ({exc})") from None
    testfed_main: Callable[[Sequence[str]], int] = module.main
    return testfed_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "mount": _mount,
    "umount": _umount,
    "install-helper": _install_helper,
    "prefetch": _prefetch,
    "cache": _cache,
    "verify": lambda argv: importlib.import_module("davfed_fuse.cli.verify").main(argv),
    "testfed": _testfed,
}


def _guard(run: Callable[[], int]) -> int:
    """Turn davfed's errors into ``davfed: <message>`` and exit codes 1 / 32."""
    try:
        return run()
    except UsageError as exc:
        print(f"davfed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except DavfedError as exc:
        print(f"davfed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_MOUNT
    except KeyboardInterrupt:
        print("davfed: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]).startswith("mount."):
        return helper_main(sys.argv)
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return EXIT_OK if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(version_text())
        return EXIT_OK
    if "://" in args[0]:  # libfuse's mount.fuse: `davfed URL DIR -o OPTS`
        return helper_main(["davfed", *args])
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"davfed: unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return EXIT_USAGE
    return _guard(lambda: command(args[1:]))
