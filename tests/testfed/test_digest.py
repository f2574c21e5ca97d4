"""``Want-Digest``: the front end 302s to a ``candochecksum`` replica, which sends ``Digest``."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from davfed_testfed import TestFederation, TestFedError
from davfed_testfed.digests import choose_algorithm, compute, corrupt, file_digest
from davfed_testfed.faults import FaultError, make_fault

MakeFed = Callable[..., TestFederation]
BIG = "data/big.bin"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        yield client


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def checksum_location(http: httpx.Client, fed: TestFederation, relpath: str) -> str:
    r = http.head(fed.file_url(relpath), headers={"Want-Digest": "adler32"})
    assert r.status_code == 302, r.status_code
    assert "metalink" in r.headers["Link"]
    return r.headers["Location"]


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("adler32", "adler32"),
        ("ADLER32", "adler32"),
        ("md5", "md5"),
        ("MD5, adler32", "md5"),
        ("md5;q=0.3, adler32", "adler32"),
        ("adler32;q=0, md5;q=0.1", "md5"),
        ("sha-256, adler32;q=0.5", "adler32"),
        ("sha-256", None),
        ("adler32;q=bogus", None),
        ("", None),
    ],
)
def test_choose_algorithm(header: str, chosen: str | None) -> None:
    assert choose_algorithm(header) == chosen


def test_compute_matches_zlib_and_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000 + b"tail"  # more than one read chunk
    path = tmp_path / "f"
    path.write_bytes(data)
    assert compute(path, "adler32") == adler32(data)
    assert compute(path, "md5") == md5(data)
    assert compute(tmp_path / "f", "adler32") == file_digest(path, "adler32")
    (tmp_path / "empty").write_bytes(b"")
    assert compute(tmp_path / "empty", "adler32") == "00000001"
    with pytest.raises(ValueError, match="unsupported"):
        compute(path, "sha1")


def test_file_digest_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    assert file_digest(path, "adler32") == adler32(b"one")
    path.write_bytes(b"other content")
    assert file_digest(path, "adler32") == adler32(b"other content")


def test_corrupt_keeps_the_shape() -> None:
    assert corrupt("7e29eaae", "adler32") != "7e29eaae"
    assert len(corrupt("7e29eaae", "adler32")) == 8
    good = md5(b"x")
    bad = corrupt(good, "md5")
    assert bad != good
    assert len(base64.b64decode(bad)) == 16


def test_digest_fault_takes_an_optional_path() -> None:
    assert make_fault("digest", {}).kind == "digest"
    assert make_fault("digest", {"path": "/a/b"}).path == "a/b"
    with pytest.raises(FaultError, match="no parameter"):
        make_fault("digest", {"size": 3})


# --- a running federation -----------------------------------------------------------------


def test_want_digest_redirects_and_replica_answers_digest(
    testfed: TestFederation, testfed_files: dict[str, bytes], http: httpx.Client
) -> None:
    data = testfed_files[BIG]
    assert all(e.candochecksum for e in testfed.endpoints)  # the default: every endpoint
    location = checksum_location(http, testfed, BIG)
    assert location == testfed.endpoints[0].base_url + BIG
    head = http.head(location, headers={"Want-Digest": "adler32"})
    assert head.status_code == 200
    assert head.headers["Digest"] == f"adler32={adler32(data)}"
    get = http.get(location, headers={"Want-Digest": "md5"})
    assert get.status_code == 200
    assert get.content == data
    assert get.headers["Digest"] == f"md5={md5(data)}"
    # a ranged GET still gets the digest of the whole file (an instance digest)
    ranged = http.get(location, headers={"Want-Digest": "adler32", "Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.content == data[:10]
    assert ranged.headers["Digest"] == f"adler32={adler32(data)}"
    # no Want-Digest, or nothing we compute: no Digest header
    assert "Digest" not in http.head(location).headers
    assert "Digest" not in http.head(location, headers={"Want-Digest": "sha-256"}).headers


def test_names_with_odd_characters(
    testfed: TestFederation, testfed_files: dict[str, bytes], http: httpx.Client
) -> None:
    name = "names/ünïcødé ☃.txt"
    location = checksum_location(http, testfed, name)
    head = http.head(location, headers={"Want-Digest": "adler32"})
    assert head.headers["Digest"] == f"adler32={adler32(testfed_files[name])}"


def test_plain_redirects_are_unchanged(testfed: TestFederation, http: httpx.Client) -> None:
    r = http.get(testfed.file_url(BIG))
    assert r.status_code == 302
    assert r.headers["Location"] == testfed.endpoints[0].base_url + BIG
    assert "Digest" not in r.headers


def test_digest_fault_reports_a_wrong_checksum(
    testfed: TestFederation, testfed_files: dict[str, bytes], http: httpx.Client
) -> None:
    data = testfed_files[BIG]
    testfed.fault(0, "digest", path=BIG)
    location = checksum_location(http, testfed, BIG)
    head = http.head(location, headers={"Want-Digest": "adler32"})
    assert head.headers["Digest"] == f"adler32={corrupt(adler32(data), 'adler32')}"
    # other files on that endpoint, and the same file elsewhere, are unaffected
    other = http.head(
        testfed.endpoints[0].base_url + "data/block.bin", headers={"Want-Digest": "adler32"}
    )
    assert other.headers["Digest"] == f"adler32={adler32(testfed_files['data/block.bin'])}"
    elsewhere = http.head(testfed.endpoints[1].base_url + BIG, headers={"Want-Digest": "md5"})
    assert elsewhere.headers["Digest"] == f"md5={md5(data)}"
    # and the bytes themselves are still right
    assert http.get(location, headers={"Want-Digest": "adler32"}).content == data
    testfed.clear_faults(0)
    head = http.head(location, headers={"Want-Digest": "adler32"})
    assert head.headers["Digest"] == f"adler32={adler32(data)}"


def test_digest_follows_a_resized_replica(
    testfed: TestFederation, testfed_files: dict[str, bytes], http: httpx.Client
) -> None:
    data = testfed_files[BIG]
    testfed.fault(0, "resize", path=BIG, size=1000)
    head = http.head(testfed.endpoints[0].base_url + BIG, headers={"Want-Digest": "adler32"})
    assert head.headers["Digest"] == f"adler32={adler32(data[:1000])}"
    assert head.headers["Content-Length"] == "1000"
    # with a proxied fault too, the fault server serves the resized copy (not a 404)
    testfed.fault(0, "slow", delay=0.01)
    assert http.get(testfed.endpoints[0].base_url + BIG).content == data[:1000]


def test_digest_with_another_fault_proxied(
    testfed: TestFederation, testfed_files: dict[str, bytes], http: httpx.Client
) -> None:
    testfed.fault(0, "slow", delay=0.01)
    head = http.head(testfed.endpoints[0].base_url + BIG, headers={"Want-Digest": "adler32"})
    assert head.headers["Digest"] == f"adler32={adler32(testfed_files[BIG])}"


def test_only_flagged_endpoints(
    make_testfed: MakeFed,
    testfed_tree: Path,
    testfed_files: dict[str, bytes],
    http: httpx.Client,
) -> None:
    fed = make_testfed(testfed_tree, endpoints=3, checksum_endpoints=[2])
    assert [e.candochecksum for e in fed.endpoints] == [False, False, True]
    assert fed.info["endpoints"][2]["candochecksum"] is True
    # a plain GET still goes to the nearest endpoint, a checksum request to the flagged one
    assert http.get(fed.file_url(BIG)).headers["Location"] == fed.endpoints[0].base_url + BIG
    assert checksum_location(http, fed, BIG) == fed.endpoints[2].base_url + BIG
    # an endpoint that cannot checksum ignores Want-Digest (nginx serves the file as is)
    plain = http.head(fed.endpoints[0].base_url + BIG, headers={"Want-Digest": "adler32"})
    assert plain.status_code == 200
    assert "Digest" not in plain.headers
    # the flagged endpoint offline: no replica can answer
    fed.fault(2, "down")
    fed.wait_health(2, online=False)
    r = http.head(fed.file_url(BIG), headers={"Want-Digest": "adler32"})
    assert r.status_code == 404
    fed.clear_faults()


def test_no_flagged_endpoint_is_400(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client
) -> None:
    fed = make_testfed(testfed_tree, endpoints=2, checksum_endpoints=[])
    assert not any(e.candochecksum for e in fed.endpoints)
    r = http.get(fed.file_url(BIG), headers={"Want-Digest": "adler32"})
    assert r.status_code == 400
    assert "No plugin can calculate a checksum" in r.text
    assert http.get(fed.file_url(BIG)).status_code == 302  # without Want-Digest: as before


def test_signed_endpoints(
    make_testfed: MakeFed,
    testfed_tree: Path,
    testfed_files: dict[str, bytes],
    http: httpx.Client,
) -> None:
    fed = make_testfed(testfed_tree, endpoints=2, kinds=["s3v2", "azure"])
    data = testfed_files[BIG]
    location = checksum_location(http, fed, BIG)
    assert "Signature=" in location
    assert http.head(location, headers={"Want-Digest": "adler32"}).headers["Digest"] == (
        f"adler32={adler32(data)}"
    )
    fed.fault(0, "digest")
    assert http.head(location, headers={"Want-Digest": "md5"}).headers["Digest"] == (
        f"md5={corrupt(md5(data), 'md5')}"
    )
    fed.fault(0, "down")
    fed.wait_health(0, online=False)
    azure = checksum_location(http, fed, BIG)
    assert "sig=" in azure
    assert http.get(azure, headers={"Want-Digest": "adler32"}).headers["Digest"] == (
        f"adler32={adler32(data)}"
    )


def test_bad_checksum_endpoints_option(testfed_tree: Path) -> None:
    with pytest.raises(TestFedError, match="checksum-endpoints"):
        TestFederation(testfed_tree, endpoints=2, checksum_endpoints=[5]).start()
