"""``davfed cache stats`` and ``davfed cache clean``: the block cache seen from outside.

Owns: finding the caches under a ``cache_dir`` (one ``<host>-<hash12>/`` per federation,
each a :class:`~davfed_fuse.cache.blockcache.BlockCache` root), reading a cache's size and
counters from its index *without* its lock (a running daemon holds it), telling whether a
daemon holds the lock (from ``/proc/locks``, without touching the lock), and cleaning an
idle cache through :meth:`BlockCache.clean`.
Must not import: pyfuse3, httpx, trio (``block_cache`` is imported only to clean).

The index is sqlite in WAL mode: a read-only connection (``mode=ro``) reads a consistent
snapshot while the daemon writes. Block rows are committed as blocks are stored, so size,
blocks and files are current; the counters (hits, misses, bytes fetched, pass-through) are
in memory in the daemon and written to the index only now and then (every 1024 blocks
touched, and at unmount), so for a running daemon they lag.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from davfed_fuse.exitcodes import Exit

#: The layout version directory and index file of a cache root (``block_cache.FORMAT``).
INDEX = Path("v1") / "index.sqlite3"
LOCK = "lock"
PROC_LOCKS = "/proc/locks"


class StatsError(Exception):
    """The index could not be read (missing, corrupt, not a davfed cache)."""


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What one cache root's index says, plus whether a daemon holds the root."""

    root: str
    bytes: int
    blocks: int
    files: int  # files with at least one stored block
    hits: int
    misses: int
    bytes_fetched: int
    passthrough: int
    block_size: int | None
    locked_by: int | None  # pid of the daemon holding the lock (0 if unknown), else None

    @property
    def in_use(self) -> bool:
        return self.locked_by is not None

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["hit_rate"] = round(self.hit_rate, 4)
        record["in_use"] = self.in_use
        record["counters_may_lag"] = self.in_use
        return record


def find_roots(cache_dir: Path) -> list[Path]:
    """The cache roots in ``cache_dir``: its subdirectories with an index, sorted.

    ``cache_dir`` may also be a cache root itself. A missing directory has none.
    """
    if (cache_dir / INDEX).is_file():
        return [cache_dir]
    try:
        children = sorted(cache_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [child for child in children if (child / INDEX).is_file()]


def lock_holder(root: Path, proc_locks: str = PROC_LOCKS) -> int | None:
    """The pid holding ``root/lock`` (0 if held but the pid is unknown), or None if free.

    Reads ``/proc/locks`` rather than trying the lock, so that a daemon starting at this
    moment never finds the lock taken by us. Falls back to a non-blocking shared
    ``flock`` probe where ``/proc/locks`` cannot be read.
    """
    path = root / LOCK
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return _probe_lock(path)
    return holder_in_proc_locks(text, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def holder_in_proc_locks(text: str, major: int, minor: int, inode: int) -> int | None:
    """The pid of a lock on the inode ``major:minor:inode`` in ``/proc/locks`` text.

    Lines look like ``1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`` (device numbers
    in hex, the inode in decimal); ``->`` marks a waiter, which holds nothing.
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        try:
            dev_major, dev_minor, ino = fields[5].split(":")
            if (int(dev_major, 16), int(dev_minor, 16), int(ino)) == (major, minor, inode):
                return int(fields[4])
        except ValueError:
            continue
    return None


def _probe_lock(path: Path) -> int | None:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)  # also releases the probe's lock
    return None


def read_stats(root: Path) -> IndexStats:
    """Size and counters of the cache at ``root``, read from its index without its lock.

    Raises:
        StatsError: there is no index, or sqlite cannot read it.
    """
    index = root / INDEX
    if not index.is_file():
        raise StatsError(f"{root} is not a davfed cache (no {INDEX})")
    locked_by = lock_holder(root)
    try:
        meta, blocks, size, files = _query(index, "mode=ro")
    except sqlite3.Error as exc:
        if locked_by is not None:
            raise StatsError(f"cannot read {index}: {exc}") from None
        # A user who may not create the -shm file of an idle cache: nobody writes it now.
        try:
            meta, blocks, size, files = _query(index, "immutable=1")
        except sqlite3.Error:
            raise StatsError(f"cannot read {index}: {exc}") from None
    block_size = meta.get("block_size")
    return IndexStats(
        root=str(root),
        bytes=int(size),
        blocks=int(blocks),
        files=int(files),
        hits=int(meta.get("hits", 0)),
        misses=int(meta.get("misses", 0)),
        bytes_fetched=int(meta.get("bytes_fetched", 0)),
        passthrough=int(meta.get("passthrough", 0)),
        block_size=int(block_size) if block_size is not None else None,
        locked_by=locked_by,
    )


def _query(index: Path, mode: str) -> tuple[dict[str, int], int, int, int]:
    db = sqlite3.connect(f"{index.absolute().as_uri()}?{mode}", uri=True, timeout=10)
    db.isolation_level = None  # explicit BEGIN/COMMIT below
    with contextlib.closing(db):
        db.execute("BEGIN")  # one snapshot for every query below
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        blocks, size, files = db.execute(
            "SELECT count(*), coalesce(sum(length), 0), count(DISTINCT h) FROM blocks"
        ).fetchone()
        db.execute("COMMIT")
    return meta, int(blocks), int(size), int(files)


@dataclass(frozen=True, slots=True)
class Cleaned:
    """What :func:`clean_root` freed."""

    root: str
    blocks: int
    bytes: int


def clean_root(root: Path) -> Cleaned:
    """Drop every block of the idle cache at ``root`` and reset its counters.

    Raises:
        block_cache.CacheLocked: a daemon holds the cache (nothing was changed).
        StatsError: the index cannot be read.
    """
    from davfed_fuse.cache.blockcache import BlockCache

    before = read_stats(root)
    # The cache's own block size (another one would empty it with a warning anyway) and
    # no cap worth the name, so opening it evicts nothing by itself.
    block_size = before.block_size or 4 << 20
    with BlockCache(root, max_bytes=1 << 62, block_size=block_size) as cache:
        start = cache.stats()
        dropped = cache.clean()
        after = cache.stats()
    return Cleaned(
        root=str(root),
        blocks=dropped,
        bytes=start.bytes - after.bytes,
    )


def format_bytes(n: float) -> str:
    """``1536`` → ``1.5 kB``; decimal units, as rich's ``DownloadColumn`` shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _binary(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


def format_stats(stats: IndexStats) -> str:
    """Human-readable lines for one cache root."""
    lines = [f"{stats.root}:"]
    if stats.locked_by is not None:
        pid = f"pid {stats.locked_by}" if stats.locked_by else "pid unknown"
        lines.append(
            f"  in use by a running davfed ({pid}); hits, misses and bytes fetched are as "
            "last saved by it and may lag"
        )
    else:
        lines.append("  idle (no daemon holds it)")
    lines += [
        f"  size          {format_bytes(stats.bytes)} ({stats.bytes} bytes)",
        f"  blocks        {stats.blocks}"
        + (f" of {_binary(stats.block_size)}" if stats.block_size else ""),
        f"  files         {stats.files}",
        f"  hits          {stats.hits}",
        f"  misses        {stats.misses}",
        f"  hit rate      {stats.hit_rate:.1%}",
        f"  bytes fetched {format_bytes(stats.bytes_fetched)} ({stats.bytes_fetched} bytes)",
        f"  pass-through  {stats.passthrough} blocks (fetched but not stored)",
    ]
    return "\n".join(lines)


# --- the commands --------------------------------------------------------------------


def stats_command(cache_dir: Path, *, as_json: bool = False) -> int:
    """``davfed cache stats``: 0, or 1 if some cache's index could not be read."""
    records: list[dict[str, Any]] = []
    status: int = Exit.OK
    roots = find_roots(cache_dir)
    for root in roots:
        try:
            stats = read_stats(root)
        except StatsError as exc:
            print(f"davfed: cache stats: {exc}", file=sys.stderr)
            status = Exit.USAGE
            continue
        records.append(stats.as_json())
        if not as_json:
            print(format_stats(stats))
    if as_json:
        total = {
            key: sum(r[key] for r in records)
            for key in ("bytes", "blocks", "files", "hits", "misses", "bytes_fetched")
        }
        print(json.dumps({"cache_dir": str(cache_dir), "caches": records, "total": total}))
    elif not roots:
        print(f"no davfed caches in {cache_dir}")
    return status


def clean_command(cache_dir: Path, *, as_json: bool = False) -> int:
    """``davfed cache clean``: 0, or 32 if a cache is in use by a daemon (left as it was),
    or 1 if one could not be read. Idle caches are cleaned either way."""
    from davfed_fuse.cache.blockcache import CacheError, CacheLocked

    cleaned: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    status: int = Exit.OK
    roots = find_roots(cache_dir)
    for root in roots:
        try:
            done = clean_root(root)
        except CacheLocked:
            pid = lock_holder(root)
            who = f"pid {pid}" if pid else "another process"
            message = (
                f"{root} is in use by a running davfed ({who}); unmount it first "
                "(nothing was removed)"
            )
            print(f"davfed: cache clean: {message}", file=sys.stderr)
            refused.append({"root": str(root), "pid": pid, "error": message})
            status = max(status, Exit.MOUNT)
            continue
        except (StatsError, CacheError, OSError, sqlite3.Error) as exc:
            print(f"davfed: cache clean: {root}: {exc}", file=sys.stderr)
            refused.append({"root": str(root), "pid": None, "error": str(exc)})
            status = max(status, Exit.USAGE)
            continue
        cleaned.append(asdict(done))
        if not as_json:
            freed = f"{format_bytes(done.bytes)} ({done.bytes} bytes)"
            print(f"{root}: freed {done.blocks} blocks, {freed}")
    if as_json:
        print(json.dumps({"cache_dir": str(cache_dir), "cleaned": cleaned, "refused": refused}))
    elif not roots:
        print(f"no davfed caches in {cache_dir}")
    return status
