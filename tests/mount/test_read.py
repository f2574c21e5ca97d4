"""Read a federation through a real mount with ordinary programs."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import ODD_NAMES, Mounter, requires_fuse, sha256_file

pytestmark = [pytest.mark.mount, requires_fuse]


def source_listing(root: Path) -> list[tuple[str, bool, int]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            found.append((os.path.normpath(os.path.join(rel, name)), True, 0))
        for name in filenames:
            size = os.path.getsize(os.path.join(dirpath, name))
            found.append((os.path.normpath(os.path.join(rel, name)), False, size))
    return sorted(found)


def test_find_and_stat_match_the_source_tree(
    federation: TestFederation, tree: Path, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    assert source_listing(mnt) == source_listing(tree)
    out = subprocess.run(
        ["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True
    ).stdout
    files = [rel for rel, is_dir, _ in source_listing(tree) if not is_dir]
    assert sorted(os.path.relpath(line, mnt) for line in out.splitlines()) == sorted(files)
    st = os.stat(mnt / "file-4097.bin")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 4097
    assert st.st_mode & 0o777 == 0o444
    assert int(st.st_mtime) == int(os.stat(tree / "file-4097.bin").st_mtime)
    # Stable between calls (no invented "now" timestamps).
    assert os.stat(mnt / "file-4097.bin").st_mtime_ns == st.st_mtime_ns
    assert stat.S_ISDIR(os.stat(mnt / "sub").st_mode)


def test_ls_l_of_a_big_directory(federation: TestFederation, mounter: Mounter) -> None:
    mnt = mounter(federation.url)
    out = subprocess.run(
        ["ls", "-l", str(mnt / "many")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].startswith("total")
    assert len(out) == 3001
    assert out[-1].endswith("entry-02999")


def test_every_small_file_reads_byte_for_byte(
    federation: TestFederation, tree: Path, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    for path in sorted(tree.glob("file-*.bin")) + [tree / "sub" / n for n in ODD_NAMES]:
        rel = path.relative_to(tree)
        assert (mnt / rel).read_bytes() == path.read_bytes(), rel
    cat = subprocess.run(["cat", str(mnt / "sub" / "deeper" / "leaf.txt")], capture_output=True)
    assert cat.stdout == b"leaf\n"


def test_dd_skip_and_md5sum_of_a_1g_file(
    federation: TestFederation, tree: Path, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    big = "big-1g.bin"
    for skip in (0, 1, 511, 1023):
        cmd = ["dd", "bs=1M", f"skip={skip}", "count=1", "status=none"]
        through = subprocess.run([*cmd, f"if={mnt / big}"], capture_output=True, check=True)
        direct = subprocess.run([*cmd, f"if={tree / big}"], capture_output=True, check=True)
        assert through.stdout == direct.stdout, f"skip={skip}"
    md5 = subprocess.run(["md5sum", str(mnt / big)], capture_output=True, text=True, check=True)
    ref = subprocess.run(["md5sum", str(tree / big)], capture_output=True, text=True, check=True)
    assert md5.stdout.split()[0] == ref.stdout.split()[0]


def test_errors_are_plain_errnos(federation: TestFederation, mounter: Mounter) -> None:
    mnt = mounter(federation.url)
    with pytest.raises(FileNotFoundError):
        (mnt / "no-such-file").read_bytes()
    with pytest.raises(OSError) as write:
        (mnt / "new-file").write_bytes(b"x")
    assert write.value.errno == errno.EROFS
    with pytest.raises(OSError) as append:
        open(mnt / "file-1.bin", "ab").close()
    assert append.value.errno == errno.EROFS
    for call in (lambda: os.mkdir(mnt / "d"), lambda: os.unlink(mnt / "file-1.bin")):
        with pytest.raises(OSError) as failed:
            call()
        assert failed.value.errno == errno.EROFS


def _digest(path: str) -> str:
    return sha256_file(Path(path))


def test_eight_jobs_read_different_files_at_once(
    federation: TestFederation, tree: Path, mounter: Mounter
) -> None:
    mnt = mounter(federation.url)
    names = sorted(p.name for p in (tree / "job").iterdir())
    assert len(names) == 8
    with ProcessPoolExecutor(max_workers=8) as pool:
        through = list(pool.map(_digest, [str(mnt / "job" / n) for n in names]))
    assert through == [sha256_file(tree / "job" / n) for n in names]
