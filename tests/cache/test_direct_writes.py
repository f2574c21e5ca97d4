"""Block writes bypass the page cache only for page-aligned memory (O_DIRECT's rule)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from davfed_fuse.buffers import PAGE, Buffer, is_page_aligned, new_buffer
from davfed_fuse.cache.blockfiles import write_block_file
from davfed_fuse.cache.model import url_hash

from .conftest import FakeFetcher, MakeCache, ident_for, make_source

SIZE = 1 << 20


def in_page_cache(path: Path) -> bool:
    """Whether the first page of ``path`` is in the page cache (a read that may not wait)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(PAGE)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def direct_io(tmp_path: Path) -> Path:
    """A directory whose file system takes O_DIRECT writes (skip otherwise)."""
    if not hasattr(os, "RWF_NOWAIT") or not hasattr(os, "O_DIRECT"):
        pytest.skip("needs O_DIRECT and RWF_NOWAIT")
    probe = tmp_path / "probe"
    buffer = new_buffer(SIZE)
    write_block_file(str(probe), buffer, True)
    if in_page_cache(probe):
        pytest.skip("this file system does not bypass the page cache")
    return tmp_path


def filled(buffer: bytearray | memoryview, data: bytes) -> bytearray | memoryview:
    buffer[:] = data
    return buffer


@pytest.mark.parametrize("kind", ["mmap", "bytearray", "mmap off a page boundary"])
def test_only_page_aligned_memory_is_written_around_the_page_cache(
    direct_io: Path, kind: str
) -> None:
    data = make_source(SIZE + PAGE)
    buffer: Buffer
    if kind == "mmap":
        buffer = filled(new_buffer(SIZE), data[:SIZE])
    elif kind == "bytearray":
        buffer = memoryview(bytearray(data))[1 : SIZE + 1]  # never on a page boundary
    else:
        buffer = filled(new_buffer(SIZE + PAGE), data)[1 : SIZE + 1]
    assert is_page_aligned(buffer) == (kind == "mmap")
    path = direct_io / "block"
    opened: list[int] = []
    real_open = os.open

    def spy(file: str, flags: int, mode: int = 0o777) -> int:
        opened.append(flags)
        return real_open(file, flags, mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", spy)
        write_block_file(str(path), buffer, True)
    # The policy: O_DIRECT for page-aligned memory only (what the page cache then holds
    # depends on the kernel and the disk; the fixture checked that O_DIRECT bypasses it).
    assert bool(opened[-1] & os.O_DIRECT) is (kind == "mmap")
    if kind != "mmap":
        assert in_page_cache(path)  # a buffered write leaves its pages cached
    assert path.read_bytes() == bytes(buffer)


@pytest.mark.parametrize("aligned", [True, False])
async def test_the_cache_writes_fetched_maps_around_the_page_cache(
    direct_io: Path, make_cache: MakeCache, aligned: bool
) -> None:
    """The fetcher's page-aligned buffers reach the writer as they are (readers get a
    read-only view of them, which O_DIRECT could not use); bytearrays are buffered."""
    block = 64 * 1024
    data = make_source(4 * block)
    ident = ident_for(data)
    source = FakeFetcher(data)

    async def fetch(start: int, end: int) -> Buffer:
        got = await source(start, end)
        if not aligned:
            return bytearray(got)
        buffer = new_buffer(max(end - start, SIZE))[: end - start]
        buffer[:] = got
        return buffer

    cache = make_cache(direct_io / "cache", block_size=block)
    assert bytes(await cache.read(ident, 0, len(data), fetch)) == data
    h = url_hash(ident.url)
    path = direct_io / "cache" / "v1" / h[:2] / h / "2"
    assert in_page_cache(path) is not aligned
