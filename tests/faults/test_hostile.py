"""Answers a federation should not give: each is a clear errno, and the mount lives on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.mounting import Mounter, requires_fuse

pytestmark = [pytest.mark.mount, requires_fuse]


def test_a_listing_over_the_federations_limit_is_eio(
    tmp_path: Path, mounter: Mounter, make_testfed: object
) -> None:
    data = tmp_path / "data"
    (data / "huge").mkdir(parents=True)
    (data / "small").mkdir()
    for i in range(150):
        (data / "huge" / f"f{i}").write_text("x")
    (data / "small" / "ok").write_text("fine\n")
    fed = make_testfed(data, endpoints=1, maxlistitems=100)  # type: ignore[operator]
    mnt = mounter(fed.url)
    with pytest.raises(OSError) as failed:
        os.listdir(mnt / "huge")
    assert failed.value.errno == errno.EIO
    assert (mnt / "huge" / "f7").read_text() == "x", "a name in it can still be opened"
    assert os.listdir(mnt / "small") == ["ok"]
    assert (mnt / "small" / "ok").read_text() == "fine\n"
