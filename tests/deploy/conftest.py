"""Fixtures of the deployment tests: a wheel built from a clean copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def clean_copy(dest: Path) -> Path:
    """The files git knows (committed or not), as a fresh clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def run(
    *argv: str | Path, cwd: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A command with nothing of the checkout around: empty PYTHONPATH, cwd elsewhere."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": "", "LANG": "C.UTF-8"}
    for key in ("PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_CERT", "PIP_DEFAULT_TIMEOUT"):
        if key in os.environ:
            env[key] = os.environ[key]
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a clean copy (build isolation: setuptools from the index)."""
    root = tmp_path_factory.mktemp("wheel")
    source = clean_copy(root / "src")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        root / "dist",
        source,
        cwd=root,
    )
    [built] = (root / "dist").glob("davfed-*.whl")
    shutil.rmtree(source)
    return built
