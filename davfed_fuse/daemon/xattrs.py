"""The extended attributes a mount answers, in the CVMFS style: ``user.davfed.NAME``.

Owns: the names (:data:`ROOT`, :data:`FILE`) and their values, from a
:class:`~davfed_fuse.daemon.status.MountView`. On the root: the mount's state
(``getfattr -n user.davfed.hitrate /mnt``, as ``attr -g hitrate`` on CVMFS);
on a file: where it is read from and how much of it is cached. Values are short
ASCII text; URLs are redacted (a signed URL's signature never leaves the daemon).
Must not import: pyfuse3 (the handlers turn a missing value into ENODATA).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

from davfed_fuse import __version__
from davfed_fuse.cache import blockmath
from davfed_fuse.daemon.openfiles import identity
from davfed_fuse.daemon.status import MountView, credential_info
from davfed_fuse.net.webdav import RemoteEntry
from davfed_fuse.redaction import redact_url

PREFIX = "user.davfed."


def _iso(stamp: float | None) -> str:
    return "" if stamp is None else dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat()


def _root_values(view: MountView) -> dict[str, Callable[[], str]]:
    t = view.telemetry
    return {
        "version": lambda: __version__,
        "url": lambda: redact_url(view.url),
        "pid": lambda: str(os.getpid()),
        "uptime": lambda: str(int(t.uptime())),
        "proxy": lambda: view.proxy.info()["in_use"],
        "proxy_list": lambda: view.proxy.info()["list"],
        "host": lambda: t.current_host or "",
        "hitrate": lambda: f"{100 * view.hit_rate():.3f}",
        "nioerr": lambda: str(t.ioerrors),
        "timestamp_last_ioerr": lambda: _iso(t.last_ioerror_at),
        "rx": lambda: str(t.storage_bytes),
        "speed": lambda: str(int(t.speed() / 1000)),
        "ndownload": lambda: str(t.downloads),
        "nopen": lambda: str(view.open_files()),
        "credential_expiry": lambda: credential_info(view.credentials)["expiry"] or "",
        "health": lambda: view.health()[0],
        "control": lambda: str(view.control_socket or ""),
    }


#: The root's attributes (``user.davfed.`` + each); ``tables`` is the handlers' own.
ROOT = (
    "version",
    "url",
    "pid",
    "uptime",
    "proxy",
    "proxy_list",
    "host",
    "hitrate",
    "nioerr",
    "timestamp_last_ioerr",
    "rx",
    "speed",
    "ndownload",
    "nopen",
    "credential_expiry",
    "health",
    "control",
    "tables",
)

#: A file's attributes.
FILE = ("replica", "cached", "etag")


def root_value(view: MountView, name: str) -> str | None:
    """The value of the root's attribute ``name`` (without the prefix), None if unknown."""
    getter = _root_values(view).get(name)
    return None if getter is None else getter()


def file_value(view: MountView, entry: RemoteEntry, name: str) -> str | None:
    """The value of a file's attribute ``name``, None if unknown.

    ``replica``: the URL its reads go to now (empty until read, or after the target
    was dropped); ``cached``: the fraction of its blocks on disk, 0 to 1;
    ``etag``: the federation's ETag (empty if it gave none).
    """
    if name == "replica":
        target = view.federation.target(entry.path)
        return "" if target is None else redact_url(target)
    if name == "etag":
        return entry.etag or ""
    if name == "cached":
        cache = view.cache
        if cache is None or entry.size == 0:
            return "0" if entry.size else "1"
        ident = identity(view.federation, entry)
        blocks = blockmath.block_count(entry.size, cache.block_size)
        stored = sum(1 for k in range(blocks) if cache.is_cached(ident, k))
        return f"{stored / blocks:.4f}"
    return None


def names(is_root: bool, is_dir: bool) -> list[bytes]:
    """What ``listxattr`` answers for an inode."""
    if is_root:
        return [(PREFIX + n).encode() for n in ROOT]
    if is_dir:
        return []
    return [(PREFIX + n).encode() for n in FILE]
