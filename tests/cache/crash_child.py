"""Child process for the kill -9 test: reads random ranges through a BlockCache forever.

Its writer prints ``mid`` to stdout halfway through each block file, then pauses, so the
parent can kill it in the middle of a write. Usage: ``python -m tests.cache.crash_child ROOT``.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import trio

from davfed_fuse.cache.blockcache import BlockCache

from .conftest import BS, FakeFetcher, ident_for, make_source

SOURCE = make_source(60 * BS + 321, seed=99)
CAP = 25 * BS  # smaller than the file: evictions happen too


def slow_writer(path: str, data: bytes, direct: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data[: len(data) // 2])
        print("mid", flush=True)
        time.sleep(0.002)
        os.write(fd, data[len(data) // 2 :])
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(root: Path) -> None:
    cache = BlockCache(root, block_size=BS, max_bytes=CAP, writer=slow_writer)
    fetch = FakeFetcher(SOURCE)
    ident = ident_for(SOURCE)
    rng = random.Random()
    print("ready", flush=True)
    while True:
        offset = rng.randrange(len(SOURCE))
        length = rng.randrange(1, 4 * BS)
        assert await cache.read(ident, offset, length, fetch) == SOURCE[offset : offset + length]


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
