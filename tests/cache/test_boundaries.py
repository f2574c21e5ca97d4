"""The cache modules stay below the FUSE and HTTP layers: importing them loads neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "davfed_fuse.cache.blockmath",
        "davfed_fuse.cache.blockcache",
        "davfed_fuse.daemon.filereader",
    ],
)
def test_imports_neither_pyfuse3_nor_httpx(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'httpx')); "
        "print(','.join(bad))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
