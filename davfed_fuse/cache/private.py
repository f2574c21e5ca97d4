"""A cache only its owner can read: directories 0700, files 0600, whatever the umask.

Owns: making and checking the modes of the cache's directories and files. The cache
holds the bytes of files the federation grants only to the mount's credential, and
its index names every URL: another user of the VM must not read either, even when
the mount itself (without ``allow_other``) refuses them.
Must not import: anything of davfed but the cache's ``model`` (pure ``os`` calls).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from davfed_fuse.cache.model import CacheError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
#: Mode bits that let someone other than the owner in.
OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


class CacheNotPrivate(CacheError):
    """A cache directory others can enter, and that davfed cannot tighten."""


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents 0700 (exactly: the umask does not apply)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: checked by ensure_private
        os.chmod(directory, DIR_MODE)  # mkdir's mode is reduced by the umask


def ensure_private(path: Path) -> bool:
    """Make sure only the owner can enter the existing directory ``path``.

    A directory of the mounting user that others can enter (made by an older davfed,
    or by hand) is tightened to 0700 with one warning; returns True if it was. One
    that cannot be tightened (owned by someone else) raises :class:`CacheNotPrivate`
    with what to do about it.
    """
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheNotPrivate(f"cache directory {path} is not a directory")
    if not info.st_mode & OPEN_BITS:
        return False
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError:
        raise CacheNotPrivate(
            f"cache directory {path} can be read by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}) and is not ours to change "
            f"(owner uid {info.st_uid}); run 'chmod 700 {path}' as its owner, "
            "or choose another cache_dir="
        ) from None
    log.warning(
        "cache directory %s could be read by other users (mode %04o): now 0700",
        path,
        stat.S_IMODE(info.st_mode),
    )
    return True


def private_root(root: Path) -> None:
    """Prepare a cache root, where the blocks and the index live: made 0700 (with any
    missing parents, such as a new ``cache_dir``), or checked and tightened if it exists.

    An existing parent is left as it is: ``cache_dir`` may be a shared directory (``/tmp``,
    ``/var/cache``) that is not davfed's to change; the root is the boundary.
    """
    make_private_dirs(root)
    ensure_private(root)


def create_private_file(path: str) -> None:
    """Create ``path`` 0600 if it does not exist (before sqlite opens it, so that its
    journal files, which sqlite gives the database's mode, are private too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & FILE_MODE)
    finally:
        os.close(fd)
