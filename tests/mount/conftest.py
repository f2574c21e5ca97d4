"""Real mounts of one session federation over a tree from 0 B to 1 GiB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import ODD_NAMES, MiB, pattern, write_big


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source tree a federation serves: sizes from 0 B to 64 MiB, odd names, a big dir."""
    root = tmp_path_factory.mktemp("fedtree")
    sizes = [0, 1, 4095, 4096, 4097, 131072, MiB + 1, 5 * MiB + 3]
    for i, size in enumerate(sizes):
        (root / f"file-{size}.bin").write_bytes(pattern(size, i))
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(ODD_NAMES):
        (root / "sub" / name).write_bytes(pattern(1000 + i, 100 + i))
    (root / "sub" / "deeper" / "leaf.txt").write_text("leaf\n")
    many = root / "many"
    many.mkdir()
    for i in range(3000):
        (many / f"entry-{i:05d}").write_bytes(str(i).encode())
    write_big(root / "big-1g.bin", 1024 * MiB, 7)
    (root / "job").mkdir()
    for i in range(8):
        write_big(root / "job" / f"input-{i}.root", 256 * MiB, 1000 + i)
    return root


@pytest.fixture(scope="session")
def federation(tree: Path) -> Iterator[TestFederation]:
    with TestFederation(tree, endpoints=3) as fed:
        yield fed
