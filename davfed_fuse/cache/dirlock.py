"""The cache directory's lock: one daemon per cache directory per host.

Owns: ``root/lock``, held with ``flock(LOCK_EX | LOCK_NB)`` for the cache's lifetime
and holding the holder's pid (``davfed cache stats`` and the error below show it).
Must not import: any other module of the cache but ``model``; trio, pyfuse3, httpx.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from davfed_fuse.cache.model import CacheLocked
from davfed_fuse.cache.private import FILE_MODE


class DirectoryLock:
    """An exclusive ``flock`` on ``path``, taken at construction; :meth:`release` frees it.

    Raises :class:`CacheLocked` (with the holder's pid) if another process holds it.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CacheLocked(
                f"cache directory {path.parent} is in use by another davfed (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Close the lock file (which drops the lock). Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
