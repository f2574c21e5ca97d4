"""The kernel's mount table, as davfed needs it.

Owns: THE reading of the kernel's mount table: parsing ``/proc/self/mountinfo``
(pure), finding the mounts on a directory and the mount a path lives on, finding
the daemon that serves a mountpoint, recognising a stale FUSE mountpoint
(ENOTCONN) and detaching or unmounting one (through ``umount`` /
``fusermount3``). Nothing else in davfed, its tests or its benchmarks reads
``/proc/self/mountinfo`` or ``/proc/mounts``.
Must not import: pyfuse3, trio, httpx, or any davfed module but ``errors``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from davfed_fuse.errors import MountError

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
#: What the kernel calls a davfed mount (``fuse.`` + the subtype).
FSTYPE = "fuse.davfed"

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo (proc(5)), with the octal escapes decoded."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str

    @property
    def is_davfed(self) -> bool:
        return self.fstype == FSTYPE


def unescape(field: str) -> str:
    """Decode the kernel's ``\\040``-style escapes (space, tab, newline, backslash)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo_line(line: str) -> MountEntry:
    """Parse one mountinfo line.

    ``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue``
    (any number of optional fields precede the ``-``).

    Raises:
        ValueError: the line does not have mountinfo's shape.
    """
    fields = line.rstrip("\n").split(" ")
    try:
        dash = fields.index("-", 6)
    except ValueError:
        raise ValueError(f"not a mountinfo line: {line!r}") from None
    if len(fields) < dash + 3:
        raise ValueError(f"not a mountinfo line: {line!r}")
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        device=fields[2],
        root=unescape(fields[3]),
        mountpoint=unescape(fields[4]),
        options=fields[5],
        fstype=unescape(fields[dash + 1]),
        source=unescape(fields[dash + 2]),
        super_options=fields[dash + 3] if len(fields) > dash + 3 else "",
    )


def parse_mountinfo(lines: Iterable[str]) -> list[MountEntry]:
    """Parse every non-empty line, in the kernel's order (later lines are on top)."""
    return [parse_mountinfo_line(line) for line in lines if line.strip()]


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f)


def mounts_at(
    mountpoint: str | os.PathLike[str],
    entries: Sequence[MountEntry] | None = None,
    *,
    resolve: bool = True,
) -> list[MountEntry]:
    """Every mount on exactly ``mountpoint``, bottom first (stacked mounts: several).

    ``resolve`` resolves symlinks first. A daemon must pass ``resolve=False`` for
    its own mountpoint: resolving it stats it, a FUSE request to itself, which hangs
    before the request loop runs.
    """
    target = os.path.realpath(mountpoint) if resolve else os.fspath(mountpoint)
    if entries is None:
        entries = read_mountinfo()
    return [entry for entry in entries if entry.mountpoint == target]


def find_mount(
    mountpoint: str | os.PathLike[str],
    entries: Sequence[MountEntry] | None = None,
    *,
    resolve: bool = True,
) -> MountEntry | None:
    """The topmost mount on exactly ``mountpoint`` (see :func:`mounts_at`), or None."""
    found = mounts_at(mountpoint, entries, resolve=resolve)
    return found[-1] if found else None


def containing_mount(
    path: str | os.PathLike[str], entries: Sequence[MountEntry] | None = None
) -> MountEntry | None:
    """The mount ``path`` (made absolute, symlinks resolved) lives on: the deepest
    mountpoint that is ``path`` or one of its ancestors (the topmost if stacked)."""
    target = os.path.realpath(path)
    if entries is None:
        entries = read_mountinfo()
    best: MountEntry | None = None
    for entry in entries:
        point = entry.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best


def daemon_pid(mountpoint: str | os.PathLike[str], proc: str = "/proc") -> int | None:
    """The pid of the davfed daemon serving ``mountpoint``, or None.

    The daemon is the process whose arguments hold ``--ready-fd`` (the launcher
    always passes it) and the mountpoint, exactly as it was given.
    """
    target = os.fsencode(os.fspath(mountpoint))
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--ready-fd" in argv and target in argv:
            return int(entry)
    return None


def is_stale(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a FUSE mountpoint whose daemon is gone (ENOTCONN).

    ``stat`` alone is not enough: the kernel answers it from its attribute
    cache for a while after the daemon died. ``statvfs`` always asks the
    daemon. (A daemon that is alive but hung makes this block.)
    """
    try:
        os.stat(path)
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _run(command: Sequence[str]) -> str | None:
    """Run ``command``; None on success, else its last line of complaint."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command[0]}: {exc}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"{command[0]} exited with status {done.returncode}"


def unmount(mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmount with ``umount`` (root), falling back to ``fusermount3 -u``.

    ``lazy`` detaches at once even if files are open (``umount -l`` / ``-uz``).

    Raises:
        MountError: both failed; the message is the tool's last complaint.
    """
    path = os.fspath(mountpoint)
    attempts: list[list[str]] = []
    if os.geteuid() == 0 and shutil.which("umount"):
        attempts.append(["umount", "-l", path] if lazy else ["umount", path])
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount:
        attempts.append([fusermount, "-uz" if lazy else "-u", path])
    if not attempts:
        raise MountError("neither umount nor fusermount3 is available")
    complaint = ""
    for command in attempts:
        failure = _run(command)
        if failure is None:
            log.info("unmounted %s (%s)", path, " ".join(command[:-1]))
            return
        complaint = failure
        log.debug("%s failed: %s", " ".join(command), failure)
    raise MountError(f"cannot unmount {path}: {complaint}")


def detach_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """Lazily detach ``mountpoint`` if it is stale. Returns True if it was.

    Raises:
        MountError: it is stale and could not be detached.
    """
    if not is_stale(mountpoint):
        return False
    log.warning(
        "%s: Transport endpoint is not connected (a dead FUSE daemon); detaching it",
        os.fspath(mountpoint),
    )
    unmount(mountpoint, lazy=True)
    return True
