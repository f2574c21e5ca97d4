"""The install a VM runs: a wheel built from a clean copy of the repository, installed
into a fresh venv (no test-only dependency comes with it), ``davfed install-helper``,
``mount -t davfed`` through mount(8) with nothing of the checkout on the path, a file
read and checked, unmount; then the uninstall paths.

mount(8) looks for helpers in /sbin only. Several people's tests share this machine's
/sbin, so the mount runs in a private mount namespace (``unshare -m``) in which the
prefix install-helper wrote to is bind-mounted over /sbin: the real mount(8), libmount's
real lookup, nothing of anyone else's touched."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.deploy.conftest import run
from tests.mounting import requires_fuse

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """The wheel installed into a fresh venv ROOT/opt/davfed."""
    root = tmp_path_factory.mktemp("vm")
    base_python = getattr(sys, "_base_executable", sys.executable)
    run(base_python, "-m", "venv", root / "opt" / "davfed", cwd=root)
    run(root / "opt/davfed/bin/pip", "install", "-q", wheel, cwd=root)
    yield root


def test_the_wheel_brings_no_test_dependency_and_its_docs(installed: Path) -> None:
    pip = installed / "opt/davfed/bin/pip"
    names = {
        line.split("==")[0].lower() for line in run(pip, "freeze", cwd=installed).stdout.split()
    }
    assert "davfed" in names
    assert not names & {"aiohttp", "pytest", "hypothesis", "mypy", "ruff"}, names
    davfed = installed / "opt/davfed/bin/davfed"
    assert "davfed help options" in run(davfed, "--help", cwd=installed).stdout
    table = run(davfed, "help", "options", cwd=installed).stdout
    assert "cache_size=VALUE" in table and "[default: 20G]" in table
    assert run(davfed, "help", "man", cwd=installed).stdout.startswith(".TH DAVFED 8")
    docs = installed / "opt/davfed/share/doc/davfed"
    assert {"options.md", "install.md", "cloud-init.md", "LICENSE"} <= {
        p.name for p in docs.iterdir()
    }
    # The test federation needs its extra: without it, one line says so.
    testfed = run(davfed, "testfed", installed, "--port", "1", cwd=installed, check=False)
    assert testfed.returncode != 0 and "Traceback" not in testfed.stderr


@pytest.mark.mount
@requires_fuse
def test_mount_t_davfed_from_the_wheel_reads_the_federation(
    installed: Path, testfed_tree: Path, testfed_files: dict[str, bytes], tmp_path: Path
) -> None:
    davfed = installed / "opt/davfed/bin/davfed"
    sbin, man, units = tmp_path / "sbin", tmp_path / "man", tmp_path / "units"
    run(
        davfed,
        "install-helper",
        "--prefix",
        sbin,
        "--man-dir",
        man,
        "--unit-dir",
        units,
        cwd=tmp_path,
    )
    mnt, out = tmp_path / "mnt", tmp_path / "big.bin"
    mnt.mkdir()
    with TestFederation(testfed_tree, endpoints=2) as fed:
        script = (
            "set -e\n"
            f"mount --bind {sbin} {os.path.realpath('/sbin')}\n"
            f"mount -t davfed -o ro,_netdev,cache_dir={tmp_path}/cache {fed.url} {mnt}\n"
            f"grep ' {mnt} ' /proc/self/mounts\n"
            f"cat {mnt}/data/big.bin > {out}\n"
            f"umount {mnt}\n"
            f"grep -c ' {mnt} ' /proc/self/mounts || true\n"
        )
        result = run(
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            cwd=tmp_path,
            check=False,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    source, mountpoint, fstype = result.stdout.splitlines()[0].split()[:3]
    assert (source, mountpoint, fstype) == (fed.url, str(mnt), "fuse.davfed")
    assert result.stdout.splitlines()[-1] == "0"  # unmounted
    want = hashlib.sha256(testfed_files["data/big.bin"]).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    # The daemon ran from the wheel's venv, not from the checkout.
    assert not any(
        str(REPO) in line for line in (tmp_path / "sbin" / "mount.davfed").read_text().splitlines()
    )


def test_uninstall_leaves_nothing_and_a_stale_helper_explains_itself(
    installed: Path, tmp_path: Path, wheel: Path
) -> None:
    davfed = installed / "opt/davfed/bin/davfed"
    args = [
        "--prefix",
        tmp_path / "sbin",
        "--man-dir",
        tmp_path / "man",
        "--unit-dir",
        tmp_path / "units",
    ]
    run(davfed, "install-helper", *args, cwd=tmp_path)
    installed_files = sorted(p for p in tmp_path.rglob("*") if not p.is_dir())
    assert len(installed_files) == 4
    run(davfed, "install-helper", "--uninstall", *args, cwd=tmp_path)
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []

    # Forgotten before `pip uninstall`: the helper says what happened, and what to remove.
    run(davfed, "install-helper", *args, cwd=tmp_path)
    run(installed / "opt/davfed/bin/pip", "uninstall", "-y", "-q", "davfed", cwd=tmp_path)
    try:
        for helper in ("mount.davfed", "mount.fuse.davfed"):
            result = run(
                tmp_path / "sbin" / helper,
                "https://f.example/",
                tmp_path,
                "-o",
                "ro",
                cwd=tmp_path,
                check=False,
            )
            assert result.returncode == 32
            assert "Traceback" not in result.stderr
            [line] = result.stderr.splitlines()
            assert "davfed is no longer installed" in line and "davfed install-helper" in line
            listed = sorted(Path(p) for p in line.split("rm -f ", 1)[1].split())
            assert listed == installed_files
    finally:
        run(installed / "opt/davfed/bin/pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
