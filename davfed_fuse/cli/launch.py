"""The mount(8) helper and the launcher behind ``davfed mount`` without ``-f``.

Owns: parsing the helper's command line (``mount.davfed URL DIR [-sfnv]
[-N ns] [-o OPTS]... [-t type]``), the checks before mounting (the mountpoint
exists, a stale mount is detached, the same URL is not mounted twice), and
starting the daemon with fork+exec and waiting until it reports ``READY``.
Must not import: pyfuse3, trio, httpx, ``daemon`` (the daemon runs in a child
process, never in this one: forking inside trio is unsafe).

The handshake: the daemon gets the write end of a pipe as ``--ready-fd N``
and writes ``READY\\n`` once the mount is live, or ``ERROR <message>\\n``.
The launcher returns 0 only after ``READY``; on an error line, the daemon's
death or ``mount_timeout``, it stops the daemon, makes sure nothing is left
mounted, and raises :class:`MountError` (exit 32).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from davfed_fuse.config import Config, home_dir
from davfed_fuse.errors import MountError, UsageError
from davfed_fuse.options import Triage, join_options
from davfed_fuse.system.mounttable import detach_stale, find_mount, is_stale, unmount

log = logging.getLogger(__name__)

#: Replaces ``python -I -m davfed_fuse`` as the daemon's command (tests use a
#: fake daemon). Split with shell rules.
DAEMON_COMMAND_ENV = "DAVFED_DAEMON_COMMAND"
#: How long a stopped daemon gets to unmount before it is killed.
STOP_GRACE = 5.0

HELPER_USAGE = """\
usage: mount.davfed URL MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS]... [-t davfed]

The mount(8) helper of davfed: mounts the Dynafed federation at URL read-only
on MOUNTPOINT and returns once the mount is live.

  -o OPTIONS  comma-separated mount options (repeatable; davfed help options)
  -s          sloppy: unknown options only warn
  -f          fake: check everything and print the daemon command, mount nothing
  -n          ignored (no /etc/mtab to write)
  -v          more verbose logging (repeatable)
  -t TYPE     ignored (davfed, fuse.davfed)
  -h, --help  this help;  -V, --version  versions

exit status: 0 mounted (or already mounted), 1 usage error, 32 mount failure
"""


class AlreadyMounted(Exception):
    """The mountpoint already holds a live davfed mount of the same URL."""


@dataclass(slots=True)
class HelperArgs:
    """The helper's command line, as mount(8) gives it."""

    url: str = ""
    mountpoint: str = ""
    options: list[str] = field(default_factory=list)
    sloppy: bool = False
    fake: bool = False
    verbose: int = 0
    help: bool = False
    version: bool = False


def parse_helper_args(argv: Sequence[str]) -> HelperArgs:
    """Parse the helper's arguments (without ``argv[0]``); flags may come anywhere.

    Raises:
        UsageError: an unknown flag, a missing value, or not exactly URL and DIR.
    """
    args = HelperArgs()
    positionals: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if arg == "--":
            positionals.extend(items[i:])
            break
        if arg in ("--help", "-h"):
            args.help = True
            continue
        if arg in ("--version", "-V"):
            args.version = True
            continue
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        for j, flag in enumerate(arg[1:], start=1):
            if flag in "sfnv":
                args.sloppy |= flag == "s"
                args.fake |= flag == "f"
                args.verbose += flag == "v"
                continue
            if flag not in "oNt":
                raise UsageError(f"unknown helper flag '-{flag}' (see mount.davfed --help)")
            value = arg[j + 1 :]
            if not value:
                if i >= len(items):
                    raise UsageError(f"helper flag '-{flag}' needs a value")
                value = items[i]
                i += 1
            if flag == "o":
                args.options.append(value)
            elif flag == "N":
                raise UsageError("mounting into another namespace (-N) is not supported")
            break
    if args.help or args.version:
        return args
    if len(positionals) != 2:
        raise UsageError(
            f"expected URL and MOUNTPOINT, got {len(positionals)} argument(s) "
            "(see mount.davfed --help)"
        )
    args.url, args.mountpoint = positionals
    return args


def daemon_prefix() -> list[str]:
    """How to run davfed itself: this Python, isolated from the caller's cwd and env."""
    override = os.environ.get(DAEMON_COMMAND_ENV)
    if override:
        return shlex.split(override)
    return [sys.executable, "-I", "-m", "davfed_fuse"]


def daemon_command(triage: Triage, ready_fd: int | str, prefix: Sequence[str] = ()) -> list[str]:
    """The foreground daemon's argv: ``davfed mount -f --ready-fd N -o ... URL DIR``."""
    command = [*(prefix or daemon_prefix()), "mount", "-f", "--ready-fd", str(ready_fd)]
    if triage.forwarded:
        command += ["-o", join_options(triage.forwarded)]
    return [*command, "--", triage.config.url, str(triage.config.mountpoint)]


def check_mountpoint(config: Config, *, dry_run: bool = False) -> None:
    """Get ``config.mountpoint`` ready to be mounted on.

    Detaches a stale FUSE mount (unless ``dry_run``), then checks that it is a
    directory and not already a davfed mount.

    Raises:
        AlreadyMounted: a live davfed mount of the same URL is there.
        MountError: it is missing, not a directory, stale and not detachable,
            or holds a davfed mount of another URL.
    """
    path = config.mountpoint
    if dry_run:
        if is_stale(path):
            log.warning("%s is stale; a real mount would detach it first", path)
            return
    else:
        detach_stale(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    entry = find_mount(path)
    if entry is not None and entry.is_davfed:
        if entry.source == config.url:
            raise AlreadyMounted(f"{config.url} is already mounted on {path}")
        raise MountError(f"{path} already holds a davfed mount of {entry.source}; unmount it first")


def daemon_env(config: Config) -> dict[str, str]:
    """The daemon's environment: ours, ``HOME`` if missing, plus ``env.NAME=VALUE``."""
    env = dict(os.environ)
    env.pop(DAEMON_COMMAND_ENV, None)
    if os.geteuid() == 0:
        env.setdefault("HOME", "/root")
    elif "HOME" not in env:  # the daemon finds the same per-user cache as we did
        env["HOME"] = str(home_dir(env) or "/")
    env.update(config.env)
    return env


def launch(triage: Triage, *, prefix: Sequence[str] = ()) -> int:
    """Start the daemon for ``triage.config`` and return 0 once the mount is live.

    Call :func:`check_mountpoint` first. The daemon runs in its own session
    with cwd ``/``, stdin and stdout on /dev/null and stderr on ``log_file`` or
    /dev/null (it then logs to syslog).

    Raises:
        MountError: the daemon reported an error, died, or missed
            ``mount_timeout``; it has been stopped and nothing is left mounted.
    """
    config = triage.config
    read_end, write_end = os.pipe()
    try:
        stderr = _open_log(config)
        try:
            command = daemon_command(triage, write_end, prefix)
            log.debug("starting %s", shlex.join(command))
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(write_end,),
                start_new_session=True,
                cwd="/",
                env=daemon_env(config),
            )
        except OSError as exc:
            raise MountError(f"cannot start the daemon {command[0]}: {exc.strerror}") from None
        finally:
            os.close(write_end)
            write_end = -1
            if stderr != subprocess.DEVNULL:
                os.close(stderr)
        line = _read_report(read_end, config.mount_timeout)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if line == "READY":
        log.debug("daemon %d reports the mount ready", child.pid)
        return 0
    _stop(child)
    _clean_up(config)
    if line is None:
        raise MountError(
            f"the mount was not ready after {config.mount_timeout:g} s "
            "(mount_timeout); the daemon was stopped"
        )
    if line.startswith("ERROR"):
        raise MountError(line.removeprefix("ERROR").strip() or "the daemon failed")
    if line == "":
        status = child.returncode
        where = f"; see {config.log_file}" if config.log_file else "; see the system log"
        raise MountError(
            f"the daemon exited with status {status} before the mount was ready{where}"
        )
    raise MountError(f"the daemon sent an unexpected report: {line[:200]!r}")


def _open_log(config: Config) -> int:
    if config.log_file is None:
        return subprocess.DEVNULL
    try:
        return os.open(config.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        raise MountError(f"cannot open log_file {config.log_file}: {exc.strerror}") from None


def _read_report(fd: int, timeout: float) -> str | None:
    """The daemon's first line; ``""`` if it closed the pipe first, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode(errors="replace").strip()
            data += chunk
            if len(data) > 65536:
                break
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon's process group (it unmounts on SIGTERM), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("daemon %d ignored %s", child.pid, sig.name)
    child.wait()


def _clean_up(config: Config) -> None:
    """Detach a mount the failed daemon may have left behind (ours: same URL)."""
    entry = find_mount(config.mountpoint)
    if entry is not None and entry.is_davfed and entry.source == config.url:
        log.warning("a failed mount was left on %s; detaching it", config.mountpoint)
        unmount(config.mountpoint, lazy=True)
