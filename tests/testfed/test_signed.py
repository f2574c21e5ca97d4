"""The signed-URL endpoints (s3v2, s3v4, azure): URL shapes, signatures, expiry, Range, faults."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from davfed_testfed import TestFederation
from davfed_testfed.signing import expiry_of

MakeFed = Callable[..., TestFederation]
KINDS = ("dav", "s3v2", "s3v4", "azure")
SIGNED = {"s3v2": 1, "s3v4": 2, "azure": 3}
FILE = "data/block.bin"


@pytest.fixture(scope="module")
def mixed(testfed_tree: Path) -> Iterator[TestFederation]:
    with TestFederation(testfed_tree, endpoints=4, kinds=KINDS) as fed:
        yield fed


@pytest.fixture
def fed(mixed: TestFederation) -> Iterator[TestFederation]:
    yield mixed
    mixed.clear_faults()
    for endpoint in mixed.endpoints:
        mixed.wait_health(endpoint.index, online=True, timeout=10)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        yield client


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def error_code(response: httpx.Response) -> str | None:
    return ET.fromstring(response.content).findtext("Code")


def test_all_kinds_online_and_url_shapes(fed: TestFederation) -> None:
    assert fed.online() == [True] * 4
    assert [e.kind for e in fed.endpoints] == list(KINDS)
    shapes = {
        "s3v2": ["AWSAccessKeyId", "Expires", "Signature"],
        "s3v4": [
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        ],
        "azure": ["sv", "st", "se", "sr", "sp", "sig"],
    }
    for kind, index in SIGNED.items():
        url = fed.replica_url(FILE, index)
        assert url.startswith(fed.endpoints[index].base_url + FILE + "?")
        assert list(query(url)) == shapes[kind]
    assert fed.replica_url(FILE, 0) == fed.endpoints[0].base_url + FILE


@pytest.mark.parametrize("kind", SIGNED)
def test_signed_get_and_ranges(
    fed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes], kind: str
) -> None:
    data = testfed_files[FILE]
    size = len(data)
    url = fed.replica_url(FILE, SIGNED[kind])
    r = http.get(url)
    assert r.status_code == 200 and r.content == data
    r = http.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert r.content == data[100:200]
    r = http.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = http.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = http.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    r = http.get(url, headers={"Range": "bytes=0-1,10-11"})
    assert r.status_code == 200 and r.content == data


def test_dav_endpoint_ranges(
    fed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    data = testfed_files[FILE]
    url = fed.replica_url(FILE, 0)
    r = http.get(url, headers={"Range": "bytes=5-14"})
    assert r.status_code == 206 and r.content == data[5:15]
    assert r.headers["Content-Range"] == f"bytes 5-14/{len(data)}"
    assert http.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    r = http.get(url, headers={"Range": "bytes=0-1,10-11"})
    assert r.status_code == 206
    assert r.headers["Content-Type"].startswith("multipart/byteranges")


def test_s3v4_refuses_head_and_second_auth(fed: TestFederation, http: httpx.Client) -> None:
    url = fed.replica_url(FILE, SIGNED["s3v4"])
    r = http.head(url)
    assert r.status_code == 403
    r = http.request("GET", url, headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"})
    assert r.status_code == 400
    assert error_code(r) == "InvalidArgument"
    assert b"Only one auth mechanism allowed" in r.content
    # SignatureDoesNotMatch is what the HEAD body says (seen through GET with HEAD's signature).
    r = http.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert r.status_code == 403 and error_code(r) == "SignatureDoesNotMatch"


def test_head_allowed_for_s3v2_and_azure(
    fed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    for kind in ("s3v2", "azure"):
        r = http.head(fed.replica_url(FILE, SIGNED[kind]))
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(len(testfed_files[FILE]))


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("s3v2", "SignatureDoesNotMatch"),
        ("s3v4", "SignatureDoesNotMatch"),
        ("azure", "AuthenticationFailed"),
    ],
)
def test_bad_signature_is_403_xml(
    fed: TestFederation, http: httpx.Client, kind: str, code: str
) -> None:
    url = fed.replica_url(FILE, SIGNED[kind])
    other = url.replace(FILE, "hello.txt")  # a signature for another object
    r = http.get(other)
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("application/xml")
    assert error_code(r) == code
    bare = fed.endpoints[SIGNED[kind]].base_url + FILE
    assert http.get(bare).status_code in (400, 403)


def test_redirect_hands_out_cached_aging_urls(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    fed = make_testfed(
        testfed_tree, endpoints=1, kinds=["s3v2"], signature_validity=3, sign_cache_ttl=30
    )
    first = http.get(fed.file_url(FILE)).headers["Location"]
    assert http.get(first).content == testfed_files[FILE]
    time.sleep(1.1)
    again = http.get(fed.file_url(FILE)).headers["Location"]
    assert again == first  # cached: the same URL, now partly aged
    expiry = expiry_of(query(again))
    assert expiry is not None and expiry - time.time() < 2.0
    time.sleep(max(0.0, expiry - time.time()) + 1.1)
    r = http.get(first)
    assert r.status_code == 403
    assert (error_code(r), ET.fromstring(r.content).findtext("Message")) == (
        "AccessDenied",
        "Request has expired",
    )
    # The cache outlives the signature: the federation still hands out the expired URL ...
    assert http.get(fed.file_url(FILE)).headers["Location"] == first
    # ... while metalink URLs are signed afresh, and work.
    metalink = http.get(fed.file_url(FILE) + "?metalink").content
    (fresh,) = [u.text for u in ET.fromstring(metalink).iter("{http://www.metalinker.org/}url")]
    assert fresh is not None and fresh != first
    assert http.get(fresh).content == testfed_files[FILE]


def test_validity_fault_shortens_new_urls(fed: TestFederation, http: httpx.Client) -> None:
    urls: dict[str, tuple[str, str]] = {}
    for kind, index in SIGNED.items():
        long_url = fed.replica_url(FILE, index)
        fed.fault(index, "validity", seconds=1)
        short_url = fed.replica_url(FILE, index)
        long_expiry, short_expiry = expiry_of(query(long_url)), expiry_of(query(short_url))
        assert long_expiry is not None and short_expiry is not None
        assert short_expiry - time.time() <= 1.0, kind
        assert long_expiry - short_expiry > 3000, kind
        assert http.get(short_url).status_code == 200, kind
        urls[kind] = long_url, short_url
    time.sleep(2.1)
    for kind, (long_url, short_url) in urls.items():
        assert http.get(short_url).status_code == 403, kind
        assert http.get(long_url).status_code == 200, kind


def test_faults_on_a_signed_endpoint(
    fed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    index = SIGNED["s3v4"]
    url = fed.replica_url(FILE, index)
    fed.fault(index, "delete", path=FILE)
    r = http.get(url)
    assert r.status_code == 404 and error_code(r) == "NoSuchKey"
    fed.clear_faults(index)
    fed.fault(index, "resize", path=FILE, size=10)
    assert http.get(url).content == testfed_files[FILE][:10]
    fed.clear_faults(index)
    fed.fault(index, "cut", after=5000)
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url)
    fed.clear_faults(index)
    fed.fault(index, "status", status=503)
    assert http.get(url).status_code == 503
    fed.wait_health(index, online=False, timeout=5)
    fed.clear_faults(index)
    fed.wait_health(index, online=True, timeout=5)
    fed.fault(index, "down")
    with pytest.raises(httpx.ConnectError):
        http.get(url)
    fed.wait_health(index, online=False, timeout=5)
    fed.clear_faults(index)
    assert http.get(url).content == testfed_files[FILE]
    before = fed.bytes_sent(index)
    http.get(url, headers={"Range": "bytes=0-99"})
    assert fed.bytes_sent(index) == before + 100
