"""A stand-in for ``davfed mount -f --ready-fd N ... -- URL DIR``, for launcher tests.

The launcher runs it through ``DAVFED_DAEMON_COMMAND``. ``FAKE_DAEMON_MODE``
picks the behaviour; ``FAKE_DAEMON_RECORD`` names a JSON file where it writes
what it was given (argv, cwd, session, environment) before acting.

Modes: ``ready`` (report READY, exit), ``error`` (report an error, exit 32),
``silent`` (never report; sleep), ``die`` (exit 3 without a report),
``garbage`` (report nonsense), ``fuse`` (really mount an empty read-only
directory with fsname=URL and subtype=davfed, report READY, serve until
SIGTERM/SIGINT).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import time
from typing import Any


def parse(argv: list[str]) -> tuple[int, str, str, list[str]]:
    assert argv[:2] == ["mount", "-f"], argv
    assert argv[2] == "--ready-fd", argv
    fd = int(argv[3])
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    url, mountpoint = argv[argv.index("--") + 1 :]
    return fd, url, mountpoint, options


def serve_fuse(url: str, mountpoint: str, fd: int) -> int:
    import pyfuse3
    import trio

    class Empty(pyfuse3.Operations):  # type: ignore[misc]
        async def getattr(self, inode: int, ctx: Any = None) -> Any:
            if inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = inode
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
            attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
            return attrs

        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode: int, ctx: Any) -> int:
            return int(inode)

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            return None

    options = set(pyfuse3.default_options) | {f"fsname={url}", "subtype=davfed", "ro"}
    pyfuse3.init(Empty(), mountpoint, options)

    async def stop_on_signal(cancel_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            os.write(fd, b"READY\n")
            os.close(fd)
            await pyfuse3.main()  # returns on terminate() or an external umount
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


def main() -> int:
    fd, url, mountpoint, options = parse(sys.argv[1:])
    mode = os.environ.get("FAKE_DAEMON_MODE", "ready")
    record = os.environ.get("FAKE_DAEMON_RECORD")
    if record:
        with open(record, "w") as f:
            json.dump(
                {
                    "argv": sys.argv[1:],
                    "url": url,
                    "mountpoint": mountpoint,
                    "options": options,
                    "cwd": os.getcwd(),
                    "pid": os.getpid(),
                    "sid": os.getsid(0),
                    "env": dict(os.environ),
                },
                f,
            )
    if mode == "ready":
        os.write(fd, b"READY\n")
        return 0
    if mode == "error":
        os.write(fd, f"ERROR cannot reach {url}: connection refused\n".encode())
        return 32
    if mode == "silent":
        time.sleep(600)
        return 0
    if mode == "die":
        return 3
    if mode == "garbage":
        os.write(fd, b"HELLO\n")
        time.sleep(600)
        return 0
    if mode == "fuse":
        return serve_fuse(url, mountpoint, fd)
    raise SystemExit(f"unknown FAKE_DAEMON_MODE {mode}")


if __name__ == "__main__":
    sys.exit(main())
