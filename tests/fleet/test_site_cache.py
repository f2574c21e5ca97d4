"""A real squid configured as docs/site-cache.md says, in front of signed-URL endpoints:
a second VM's cold read comes from the cache although its URLs are signed differently,
and a cold random read near the end of a file on a slow origin does not time out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.fleet import squid as squidmod
from tests.fleet.squid import Squid
from tests.mounting import Mounter, requires_fuse

pytestmark = [
    pytest.mark.mount,
    requires_fuse,
    pytest.mark.skipif(not squidmod.available(), reason="needs squid (dev/bootstrap)"),
]

SIZE = 24 << 20


def test_signed_urls_share_one_cache_entry(
    make_testfed: Callable[..., TestFederation],
    make_squid: Callable[..., Squid],
    mounter: Mounter,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    content = os.urandom(SIZE)
    (data / "input.root").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    # Two S3 endpoints signing with different keys and times: no two URLs alike.
    fed = make_testfed(data, endpoints=2, kinds=["s3v4", "s3v2"], shuffle=True)
    squid = make_squid(clients=["127.0.0.1"], data_hosts=["127.0.0.1"])
    origin_before = sum(fed.bytes_sent(i) for i in range(2))
    for vm in range(2):
        mnt = mounter(fed.url, "-o", f"proxy={squid.url},cache_size=64M")
        got = hashlib.sha256((mnt / "input.root").read_bytes()).hexdigest()
        assert got == digest, f"VM {vm}: wrong bytes"
    entries = [e for e in squid.entries() if "/ep" in e.url]
    assert entries, "the data went through squid"
    origin = sum(fed.bytes_sent(i) for i in range(2)) - origin_before
    assert origin <= 1.1 * SIZE, f"the origin sent {origin} bytes for a {SIZE}-byte file"
    hits = [e for e in entries if e.hit]
    assert sum(e.bytes for e in hits) >= 0.95 * SIZE, "the second VM read from the cache"


def test_a_cold_read_at_the_end_waits_for_the_cache_to_fill(
    make_testfed: Callable[..., TestFederation],
    make_squid: Callable[..., Squid],
    mounter: Mounter,
    tmp_path: Path,
) -> None:
    """squid fetches the whole object before it can send the last MiB; davfed waits
    (timeout=2 s, the fill takes longer) instead of failing over to another replica."""
    data = tmp_path / "data"
    data.mkdir()
    content = os.urandom(SIZE)
    (data / "big.bin").write_bytes(content)
    fed = make_testfed(data, endpoints=2, kinds=["s3v4", "s3v4"])
    for i in range(2):
        fed.fault(i, "throttle", rate=4 << 20)
    squid = make_squid(clients=["127.0.0.1"], data_hosts=["127.0.0.1"])
    mnt = mounter(fed.url, "-o", f"proxy={squid.url},timeout=2,cache_size=0,proxy_fill_rate=1M")
    with (mnt / "big.bin").open("rb") as f:
        f.seek(SIZE - (1 << 20))
        assert f.read() == content[-(1 << 20) :]
    data_requests = [e for e in squid.entries() if "/ep" in e.url]
    assert data_requests and not [e for e in data_requests if "ABORTED" in e.result], (
        "no request was given up while the cache filled"
    )
    sent = [fed.bytes_sent(i) for i in range(2)]
    assert sum(sent) <= 1.1 * SIZE, f"one whole-object fetch, not one per replica: {sent}"
