"""Fixtures for real mounts against the HTTPS (Apache + mod_gridsite) test federation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Files that credential discovery would find for root, whatever the environment says.
DISCOVERABLE = (Path("/tmp/x509up_u0"), Path("/tmp/bt_u0"))


@pytest.fixture(autouse=True)
def no_credential_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Mount helpers started by these tests inherit no X509_*/BEARER_* variables.

    The files discovery falls back on must not exist either: they are someone's
    credentials, so a test never deletes them; it stops and says so.
    """
    for name in list(os.environ):
        if name.startswith(("X509_", "BEARER_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    present = [str(p) for p in DISCOVERABLE if p.exists()]
    if present:
        pytest.fail(f"credential discovery would find {present}: not removed, move them away")
    yield
