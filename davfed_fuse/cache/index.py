"""The block cache's sqlite index, and the one thread that writes it.

Owns: ``v1/index.sqlite3``: its schema, the format check at start-up (block size and
checksum algorithm: an index written with others is emptied), reading it at start-up,
and every write to it. Writes are queued to one writer thread and done there in the
order they were queued, off the event loop; so are the renames of block files into
place and the unlinks of dropped ones, so that the order of "file in place" and "row
committed" is the order the event loop decided (see "Invariants" in
``docs/dev/block-cache.md``):

- :meth:`Index.place` renames a written and fsynced ``.tmp`` into place, *then* commits
  its row (and its file's identity, in the same transaction);
- :meth:`Index.drop_blocks` commits the deletion of rows, *then* unlinks their files;
- a later placement of the same block name comes after an earlier unlink of it.

Must not import: any other module of the cache but ``model`` and ``lru`` (for
:class:`~davfed_fuse.cache.lru.Block`); pyfuse3, httpx. Reconciling the index with the
files on disk is ``fsck``'s.

The column ``blocks.crc`` holds the block checksum (``model.block_checksum``, xxh3 since
``CHECKSUM_ID`` 2): it kept its name from the crc32 days, since renaming it would need a
migration of every existing cache directory for no change in meaning. In the code it is
called ``checksum``; only the SQL here says ``crc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import trio

from davfed_fuse.cache.lru import Block
from davfed_fuse.cache.model import CHECKSUM_ID, BlockKey, FileIdentity
from davfed_fuse.cache.private import create_private_file

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    h TEXT PRIMARY KEY, url TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    h TEXT NOT NULL, idx INTEGER NOT NULL, length INTEGER NOT NULL,
    crc INTEGER NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (h, idx));
"""
_UPSERT_FILE = "INSERT OR REPLACE INTO files (h, url, size, etag, mtime_ns) VALUES (?, ?, ?, ?, ?)"
_INSERT_BLOCK = "INSERT INTO blocks (h, idx, length, crc, used) VALUES (?, ?, ?, ?, ?)"
_DELETE_BLOCK = "DELETE FROM blocks WHERE h = ? AND idx = ?"

Op = Callable[[], None]


@dataclass
class Loaded:
    """What the index held at start-up (after the format check)."""

    meta: dict[str, int] = field(default_factory=dict)
    files: dict[str, FileIdentity] = field(default_factory=dict)
    blocks: dict[BlockKey, Block] = field(default_factory=dict)  # least recently used first


def _file_row(h: str, ident: FileIdentity) -> tuple[str, str, int, str, int]:
    return (h, ident.url, ident.size, ident.etag, ident.mtime_ns)


class Index:
    """The index at ``path``. Queued writes never raise: their storage errors are kept
    for :meth:`take_error`."""

    def __init__(self, path: str, *, block_size: int) -> None:
        self.path = path
        self.block_size = block_size
        create_private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()  # the connection: the writer thread, or a sync caller
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._error: OSError | sqlite3.Error | None = None
        self._thread: threading.Thread | None = None
        try:
            self._db.isolation_level = None  # autocommit; explicit BEGIN for batches
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ start-up (sync)

    def load(self) -> Loaded:
        """Read the index; empty it first if it was written with another format."""
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        known = {"block_size": self.block_size, "checksum": CHECKSUM_ID}
        # An index without a checksum key is older than xxh3: its sums are crc32.
        found = {"block_size": meta.get("block_size", self.block_size)}
        found["checksum"] = meta.get("checksum", 1 if "block_size" in meta else CHECKSUM_ID)
        if found != known:
            log.warning(
                "cache index %s was written with %s, not %s: emptying it", self.path, found, known
            )
            db.execute("DELETE FROM blocks")
            db.execute("DELETE FROM files")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", known.items())
        loaded = Loaded(meta=meta)
        for h, url, size, etag, mtime_ns in db.execute("SELECT * FROM files"):
            loaded.files[h] = FileIdentity(url, size, etag, mtime_ns)
        query = "SELECT h, idx, length, crc, used FROM blocks ORDER BY used"
        for h, k, length, checksum, used in db.execute(query):
            loaded.blocks[(h, k)] = Block(length, checksum, used)
        return loaded

    def start(self) -> None:
        """Start the writer thread; writes queued before this wait for it."""
        self._thread = threading.Thread(target=self._run, name="davfed-cache-index", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ queued writes

    def bind_file(self, h: str, ident: FileIdentity, *, replaced: bool, dropped: list[str]) -> None:
        """Record ``ident`` as the identity of ``h``'s blocks. ``replaced``: the URL had
        another identity, whose rows all go in the same transaction (also rows of blocks
        being placed), then the files ``dropped``."""
        paths = list(dropped)

        def op() -> None:
            try:
                if replaced:
                    with self._transaction() as db:
                        db.execute("DELETE FROM blocks WHERE h = ?", (h,))
                        db.execute(_UPSERT_FILE, _file_row(h, ident))
                else:
                    self._db.execute(_UPSERT_FILE, _file_row(h, ident))
            finally:
                _unlink_all(paths)

        self._submit(op)

    def drop_blocks(self, keys: list[BlockKey], paths: list[str]) -> None:
        """Delete the rows of ``keys`` (one transaction), then unlink ``paths``.

        If the delete fails, the files are removed anyway; the rows left behind point
        at missing files, which the next start drops.
        """

        def op() -> None:
            try:
                with self._transaction() as db:
                    db.executemany(_DELETE_BLOCK, keys)
            finally:
                _unlink_all(paths)

        self._submit(op)

    def drop_files(self, hs: list[str]) -> None:
        """Forget the identities of files that have no blocks."""

        def op() -> None:
            with self._transaction() as db:
                db.executemany("DELETE FROM files WHERE h = ?", [(h,) for h in hs])

        self._submit(op)

    def save(self, used: list[tuple[int, str, int]], counters: list[tuple[str, int]]) -> None:
        """Write LRU ticks ``(used, h, idx)`` and counters ``(key, value)``."""
        self._submit(lambda: self._save(used, counters))

    def unplace(self, key: BlockKey, path: str, ident: FileIdentity | None) -> None:
        """Undo a :meth:`place` the event loop no longer wants: delete the row, restore
        the identity ``ident`` of the file (None: leave it), then unlink ``path``."""

        def op() -> None:
            try:
                with self._transaction() as db:
                    db.execute(_DELETE_BLOCK, key)
                    if ident is not None:
                        db.execute(_UPSERT_FILE, _file_row(key[0], ident))
            finally:
                _unlink_all([path])

        self._submit(op)

    async def place(
        self, tmp: str, final: str, ident: FileIdentity, key: BlockKey, block: Block
    ) -> None:
        """Rename the durable ``tmp`` to ``final``, then commit the block's row and its
        file's identity; wait (shielded from cancellation) until that is done.

        Raises the ``OSError``/``sqlite3.Error`` of the rename or the commit; then no
        row was committed and no ``final`` is left (``tmp`` may be: the caller's).
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[Exception | None] = []

        def op() -> None:
            try:
                os.replace(tmp, final)
                try:
                    with self._transaction() as db:
                        db.execute(_UPSERT_FILE, _file_row(key[0], ident))
                        db.execute(_INSERT_BLOCK, (*key, block.length, block.checksum, block.used))
                except BaseException:
                    _unlink_all([final])
                    raise
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(done.set)

        self._submit(op)
        with trio.CancelScope(shield=True):
            await done.wait()
        if outcome[0] is not None:
            raise outcome[0]

    # ------------------------------------------------------------------ sync

    def drain(self) -> None:
        """Block until every write queued so far is done (for sync callers: ``clean``, fsck)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._submit(done.set)
        done.wait()

    def take_error(self) -> OSError | sqlite3.Error | None:
        """The first storage error of a queued write since the last call, if any."""
        error, self._error = self._error, None
        return error

    def block_rows(self) -> dict[BlockKey, tuple[int, int]]:
        """``(length, checksum)`` of every block row, after every queued write (for fsck)."""
        self.drain()
        with self._lock:
            rows = self._db.execute("SELECT h, idx, length, crc FROM blocks").fetchall()
        return {(h, k): (length, checksum) for h, k, length, checksum in rows}

    def file_rows(self) -> dict[str, FileIdentity]:
        """The identity of every file row, after every queued write (for fsck)."""
        self.drain()
        with self._lock:
            rows = self._db.execute("SELECT h, url, size, etag, mtime_ns FROM files").fetchall()
        return {h: FileIdentity(url, size, etag, mtime_ns) for h, url, size, etag, mtime_ns in rows}

    def close(self) -> None:
        """Finish every queued write, stop the writer thread, close the connection."""
        try:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
        finally:
            self._db.close()

    # ------------------------------------------------------------------ the writer

    def _submit(self, op: Op) -> None:
        self._queue.put(op)

    def _run(self) -> None:
        while (op := self._queue.get()) is not None:
            try:
                with self._lock:
                    op()
            except (OSError, sqlite3.Error) as exc:
                if self._error is None:
                    self._error = exc
            except Exception:  # a bug: keep writing the rest
                log.exception("cache index %s: a write failed", self.path)

    def _save(self, used: list[tuple[int, str, int]], counters: list[tuple[str, int]]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE blocks SET used = ? WHERE h = ? AND idx = ?", used)
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", counters)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise


def _unlink_all(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
