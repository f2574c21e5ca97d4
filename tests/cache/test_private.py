"""A cache only its owner can read: 0700 directories and 0600 files whatever the umask,
an existing cache that others can enter tightened, one that cannot be tightened refused."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.cache.private import CacheNotPrivate, ensure_private
from tests.cache.conftest import BS, FakeFetcher, MakeCache, ident_for, make_source

NOBODY = 65534


def modes(root: Path) -> dict[str, int]:
    """Mode bits of ``root`` and everything under it, by path relative to ``root``."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can reach (tmp_path's parents are 0700): what /var/cache is."""
    base = Path(tempfile.mkdtemp(prefix="davfed-private-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_every_directory_0700_and_file_0600_even_with_umask_0(
    make_cache: MakeCache, tmp_path: Path, umask_zero: None
) -> None:
    data = make_source(5 * BS + 7)
    root = tmp_path / "fresh" / "cache"
    cache = make_cache(root)
    fetch = FakeFetcher(data)
    assert await cache.read(ident_for(data), 0, len(data), fetch) == data
    cache.close()
    found = modes(root)
    assert any(name.endswith("index.sqlite3") for name in found)
    assert sum(1 for name in found if name.split("/")[-1].isdigit()) >= 5  # the block files
    for name, mode in found.items():
        path = root / name
        want = 0o700 if path.is_dir() else 0o600
        assert mode == want, f"{name}: {mode:04o}, want {want:04o}"
    # cache_dir itself, made by davfed for this cache, is private too.
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700


def test_an_open_cache_directory_is_tightened_with_one_warning(
    make_cache: MakeCache, open_base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = open_base / "old-cache"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # as an older davfed left it
    with caplog.at_level(logging.WARNING):
        make_cache(root).close()
        make_cache(root).close()  # already private: no second warning
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    warnings = [r.getMessage() for r in caplog.records if "other users" in r.getMessage()]
    assert len(warnings) == 1 and str(root) in warnings[0] and "0755" in warnings[0]


def test_a_cache_directory_not_ours_that_others_can_enter_is_refused(open_base: Path) -> None:
    root = open_base / "roots-cache"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # root's, and open: nobody cannot tighten it
    code = (
        "import sys; from pathlib import Path\n"
        "from davfed_fuse.cache.private import CacheNotPrivate, ensure_private\n"
        "try:\n    ensure_private(Path(sys.argv[1]))\n"
        "except CacheNotPrivate as exc:\n    print(exc); sys.exit(3)\n"
    )
    result = as_nobody(sys.executable, "-c", code, str(root))
    assert result.returncode == 3, result.stderr
    assert "chmod 700" in result.stdout and str(root) in result.stdout
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # nothing changed
    # As its owner the same call tightens it.
    assert ensure_private(root) is True
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_cache_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_bytes(b"")
    with pytest.raises(CacheNotPrivate, match="not a directory"):
        ensure_private(path)


def test_an_existing_shared_cache_dir_is_left_alone(make_cache: MakeCache, open_base: Path) -> None:
    # cache_dir=/tmp or /var/cache: the root inside is davfed's, the directory above is not.
    make_cache(open_base / "host-0123abcd").close()
    assert stat.S_IMODE(open_base.stat().st_mode) == 0o755
    assert stat.S_IMODE((open_base / "host-0123abcd").stat().st_mode) == 0o700


async def test_another_user_cannot_read_a_cached_block(
    make_cache: MakeCache, open_base: Path
) -> None:
    data = make_source(3 * BS)
    root = open_base / "cache"
    cache = make_cache(root)
    assert await cache.read(ident_for(data), 0, len(data), FakeFetcher(data)) == data
    cache.close()
    block = next(p for p in root.rglob("*") if p.is_file() and p.name.isdigit())
    index = next(root.rglob("index.sqlite3"))
    # A control: a file left as older davfed left them, beside the cache, is readable.
    control = open_base / "control"
    control.write_bytes(b"readable")
    control.chmod(0o644)
    assert as_nobody("cat", str(control)).stdout == "readable"
    for path in (block, index):
        result = as_nobody("cat", str(path))
        assert result.returncode != 0 and "Permission denied" in result.stderr, path
