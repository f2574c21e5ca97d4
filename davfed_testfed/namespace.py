"""The federated namespace: DATA_DIR seen through the federation prefix.

Owns: mapping a request path (``/myfed/a/b``) to a relative path (``a/b``) and
back to an encoded URL path; the :class:`Entry` value the front end describes
(size, mtime, a stable file id); listing a directory. The tree is read live
from DATA_DIR on every request, so a test can add files while the federation
runs. Modes are the fixed ``0100644``/``040755`` a Dynafed reports, whatever
DATA_DIR's own modes are.

Must not import: aiohttp, or anything of davfed's outside ``testfed``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in the federation, as Dynafed's ``extendedStat`` would describe it."""

    relpath: str  # "" for the root, "/"-separated, no leading or trailing slash
    is_dir: bool
    size: int  # 0 for directories
    mtime: int  # seconds since the epoch
    fileid: int

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def mode(self) -> int:
        return DIR_MODE if self.is_dir else FILE_MODE


def normalize_prefix(prefix: str) -> str:
    """``myfed/`` or ``/myfed`` → ``/myfed``; ``/`` or ``""`` → ``""`` (federation at the root)."""
    stripped = prefix.strip("/")
    return f"/{stripped}" if stripped else ""


def relpath_of(prefix: str, url_path: str) -> str | None:
    """The relative path of a decoded request path, or None if it is outside the federation.

    ``prefix`` is normalised (``/myfed``). ``..`` and ``.`` segments are refused (None).
    """
    if url_path != prefix and not url_path.startswith(prefix + "/"):
        return None
    segments = [s for s in url_path[len(prefix) :].split("/") if s]
    if any(s in (".", "..") or "\0" in s for s in segments):
        return None
    return "/".join(segments)


def href_of(prefix: str, relpath: str, is_dir: bool) -> str:
    """The percent-encoded URL path of ``relpath``; collections end in ``/``."""
    path = f"{prefix}/{relpath}" if relpath else f"{prefix}/"
    if is_dir and not path.endswith("/"):
        path += "/"
    return quote(path, safe="/")


def _entry(relpath: str, st: os.stat_result) -> Entry | None:
    if stat.S_ISDIR(st.st_mode):
        return Entry(relpath, True, 0, int(st.st_mtime), st.st_ino)
    if stat.S_ISREG(st.st_mode):
        return Entry(relpath, False, st.st_size, int(st.st_mtime), st.st_ino)
    return None


def stat_entry(data_dir: Path, relpath: str) -> Entry | None:
    """The entry at ``relpath`` under ``data_dir``; None if absent or not a file/directory."""
    try:
        st = os.stat(data_dir / relpath if relpath else data_dir)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return _entry(relpath, st)


def list_dir(data_dir: Path, relpath: str) -> list[Entry]:
    """The children of directory ``relpath``, sorted by name.

    Children that cannot be stat'ed are skipped, as Dynafed skips "troubled elements".
    """
    base = data_dir / relpath if relpath else data_dir
    children: list[Entry] = []
    with os.scandir(base) as it:
        for item in it:
            try:
                st = item.stat()
            except OSError:
                continue
            child = _entry(f"{relpath}/{item.name}" if relpath else item.name, st)
            if child is not None:
                children.append(child)
    children.sort(key=lambda e: e.relpath)
    return children


def count_children(data_dir: Path, relpath: str, limit: int) -> int:
    """How many names directory ``relpath`` holds, counting at most ``limit + 1``."""
    n = 0
    with os.scandir(data_dir / relpath if relpath else data_dir) as it:
        for _ in it:
            n += 1
            if n > limit:
                break
    return n
