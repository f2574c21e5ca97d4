"""The test federation's S3/Azure endpoints send ETag and Last-Modified and answer
conditional requests as S3 does (over real HTTP)."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from davfed_testfed import TestFederation


@pytest.mark.parametrize("kind", ["s3v4", "s3v2", "azure"])
def test_signed_endpoints_send_validators_and_honour_conditions(
    make_testfed: Callable[..., TestFederation], tmp_path: Path, kind: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "obj.bin").write_bytes(b"x" * 5000)
    fed = make_testfed(data, endpoints=1, kinds=[kind])
    url = fed.replica_url("obj.bin", 0)

    def get(**headers: Any) -> httpx.Response:
        return httpx.get(url, headers={k.replace("_", "-"): v for k, v in headers.items()})

    first = get(Range="bytes=0-99")
    assert first.status_code == 206 and len(first.content) == 100
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and len(etag) == 34
    assert abs(parsedate_to_datetime(modified).timestamp() - (data / "obj.bin").stat().st_mtime) < 1
    assert get().headers["ETag"] == etag  # stable for an unchanged object

    assert get(If_None_Match=etag).status_code == 304
    assert get(If_None_Match='"other"').status_code == 200
    assert get(If_Modified_Since=modified).status_code == 304
    assert get(If_Modified_Since=formatdate(0, usegmt=True)).status_code == 200
    assert get(If_None_Match='"other"', If_Modified_Since=modified).status_code == 200
    assert get(If_Match='"other"').status_code == 412
    assert get(If_Match=etag, Range="bytes=0-9").status_code == 206
    assert get(If_Modified_Since="not a date").status_code == 200

    (data / "obj.bin").write_bytes(b"y" * 5000)  # replaced: a new ETag
    assert get().headers["ETag"] != etag
    assert get(If_None_Match=etag).status_code == 200
