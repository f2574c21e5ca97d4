"""Pytest fixtures for tests that need a federation (import them, or list this module in
``pytest_plugins``).

* ``testfed_tree`` (session): a small generated tree; ``testfed_files`` maps each file's
  relative path to its bytes (names with spaces, ``#``, ``?``, ``%`` and non-ASCII included).
* ``testfed_session`` (session): one federation over that tree, 3 nginx ``dav``
  endpoints, health checked every 0.2 s (max latency 0.5 s).
* ``testfed`` (function): the same federation, with every fault cleared and every
  endpoint back online after the test, so tests may inject faults freely.
* ``make_testfed`` (function): ``make_testfed(data_dir, **options)`` starts a federation
  of its own (options as :class:`davfed_fuse.testfed.TestFederation`); all are stopped
  after the test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from davfed_fuse.testfed import TestFederation

#: Names a federation must carry through percent-encoding unchanged.
SPECIAL_NAMES = (
    "names/with space.txt",
    "names/hash#name.txt",
    "names/question?mark.txt",
    "names/percent%41.txt",
    "names/ünïcødé ☃.txt",
)


def tree_files() -> dict[str, bytes]:
    """The generated tree: relative path → content (deterministic)."""
    rng = random.Random(20240501)
    files: dict[str, bytes] = {
        "hello.txt": b"hello, federation\n",
        "empty.bin": b"",
        "small/one.bin": b"\x01",
        "data/block.bin": rng.randbytes((1 << 20) + 7),
        "data/big.bin": rng.randbytes((4 << 20) + 3),
        "deep/a/b/c/leaf.txt": b"leaf\n",
    }
    for name in SPECIAL_NAMES:
        files[name] = f"content of {name}\n".encode()
    for i in range(30):
        files[f"many/f{i:03d}.txt"] = f"{i}\n".encode()
    return files


def write_tree(root: Path) -> dict[str, bytes]:
    """Write :func:`tree_files` under ``root`` (plus an empty directory ``empty-dir``)."""
    files = tree_files()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "empty-dir").mkdir(exist_ok=True)
    return files


@pytest.fixture(scope="session")
def testfed_files() -> dict[str, bytes]:
    return tree_files()


@pytest.fixture(scope="session")
def testfed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("testfed-tree")
    write_tree(root)
    return root


@pytest.fixture(scope="session")
def testfed_session(testfed_tree: Path) -> Iterator[TestFederation]:
    with TestFederation(testfed_tree, endpoints=3, health_period=0.2, max_latency=0.5) as fed:
        yield fed


@pytest.fixture
def testfed(testfed_session: TestFederation) -> Iterator[TestFederation]:
    yield testfed_session
    testfed_session.clear_faults()
    for endpoint in testfed_session.endpoints:
        testfed_session.wait_health(endpoint.index, online=True, timeout=10)


@pytest.fixture
def make_testfed() -> Iterator[Callable[..., TestFederation]]:
    started: list[TestFederation] = []

    def make(data_dir: Path, **options: Any) -> TestFederation:
        fed = TestFederation(data_dir, **options)
        started.append(fed)
        return fed.start()

    try:
        yield make
    finally:
        for fed in started:
            fed.stop()
