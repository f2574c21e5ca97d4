"""The federation front end over real HTTP: redirects, PROPFIND, listings, metalink, methods."""

from __future__ import annotations

import gzip
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from davfed_testfed import TestFederation
from tests.testfed_fixtures import SPECIAL_NAMES

DAVIX_PROPFIND = b"""<?xml version="1.0" encoding="utf-8" ?>
<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop>
<D:displayname/><D:getlastmodified/><D:creationdate/><D:getcontentlength/>
<D:quota-used-bytes/><D:resourcetype/><L:mode/><D:owner/><D:group/>
</D:prop></D:propfind>"""

MakeFed = Callable[..., TestFederation]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        yield client


def propfind(
    http: httpx.Client, url: str, depth: str | None, body: bytes = b"", **headers: str
) -> httpx.Response:
    if depth is not None:
        headers["Depth"] = depth
    return http.request("PROPFIND", url, content=body, headers=headers)


def responses(body: bytes) -> dict[str, dict[str, str]]:
    """href → {prop tag: text} of the 200 propstats of a multistatus."""
    out: dict[str, dict[str, str]] = {}
    for response in ET.fromstring(body).findall("{DAV:}response"):
        href = response.findtext("{DAV:}href") or ""
        props: dict[str, str] = {}
        for propstat in response.findall("{DAV:}propstat"):
            if propstat.findtext("{DAV:}status") == "HTTP/1.1 200 OK":
                for prop in propstat.find("{DAV:}prop") or []:
                    props[prop.tag] = "".join(prop.itertext())
        out[href] = props
    return out


# --- files: the redirect --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_file_redirects_to_first_replica(
    testfed: TestFederation, http: httpx.Client, method: str
) -> None:
    r = http.request(method, testfed.file_url("data/block.bin"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 302
    assert r.headers["Location"] == testfed.endpoints[0].base_url + "data/block.bin"
    assert r.headers["Link"] == (
        f"<//127.0.0.1:{testfed.port}/myfed/data/block.bin?metalink>; rel=describedby; "
        'type="application/metalink+xml"'
    )
    assert r.headers["Content-Type"] == "text/html; charset=iso-8859-1"
    assert "Content-Range" not in r.headers
    if method == "GET":
        assert b"<h1>Found</h1>" in r.content and r.headers["Location"].encode() in r.content
    else:
        assert r.content == b""


def test_redirect_target_serves_the_file(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    r = http.get(testfed.file_url("data/big.bin"), follow_redirects=True)
    assert r.status_code == 200
    assert r.content == testfed_files["data/big.bin"]
    assert [h.status_code for h in r.history] == [302]


def test_unknown_paths(testfed: TestFederation, http: httpx.Client) -> None:
    assert http.get(testfed.file_url("no/such/file")).status_code == 404
    assert http.head(testfed.file_url("nope")).status_code == 404
    assert http.get(f"http://127.0.0.1:{testfed.port}/other/hello.txt").status_code == 404
    assert propfind(http, testfed.file_url("nope"), "0").status_code == 404
    r = http.get(f"http://127.0.0.1:{testfed.port}/.well-known/oauth-authorization-server")
    assert r.status_code == 404


def test_methods(testfed: TestFederation, http: httpx.Client) -> None:
    url = testfed.file_url("hello.txt")
    r = http.options(url)
    assert r.status_code == 200
    assert r.headers["DAV"] == "1,2"
    assert set(r.headers["Allow"].split(",")) >= {"OPTIONS", "GET", "HEAD", "PROPFIND"}
    assert http.request("TRACE", url).status_code == 403
    r = http.post(url, content=b"x", headers={"Content-Type": "application/macaroon-request"})
    assert r.status_code == 405
    assert "POST" not in r.headers["Allow"]


# --- names that need encoding ---------------------------------------------------------------


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_special_names_round_trip(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes], name: str
) -> None:
    listing = responses(propfind(http, testfed.url + "names/", "1").content)
    href = "/myfed/" + quote(name)
    assert href in listing
    assert unquote(href) == "/myfed/" + name
    assert listing[href]["{DAV:}displayname"] == name.rsplit("/", 1)[1]
    r = http.get(f"http://127.0.0.1:{testfed.port}{href}")
    assert r.status_code == 302
    assert urlsplit(r.headers["Location"]).path == "/ep0/" + quote(name)
    assert http.get(r.headers["Location"]).content == testfed_files[name]


# --- PROPFIND -------------------------------------------------------------------------------


def test_propfind_depth0_file(
    testfed: TestFederation, http: httpx.Client, testfed_tree: Path
) -> None:
    r = propfind(http, testfed.file_url("data/block.bin"), "0")
    assert r.status_code == 207
    assert r.headers["Content-Type"] == 'text/xml; charset="utf-8"'
    st = os.stat(testfed_tree / "data/block.bin")
    (props,) = responses(r.content).values()
    assert props["{DAV:}getcontentlength"] == str(st.st_size)
    assert props["{DAV:}getetag"] == f"{st.st_ino:x}-{int(st.st_mtime):x}"
    assert props["{LCGDM:}mode"] == "0100644"
    assert props["{LCGDM:}fileid"] == str(st.st_ino)
    assert (props["{DAV:}owner"], props["{DAV:}group"]) == ("0", "0")
    assert props["{LCGDM:}guid"] == props["{LCGDM:}sumtype"] == props["{LCGDM:}sumvalue"] == ""
    assert props["{DAV:}iscollection"] == "0"


def test_propfind_depth1_lists_children(
    testfed: TestFederation, http: httpx.Client, testfed_tree: Path
) -> None:
    r = propfind(http, testfed.url, "1")
    assert r.status_code == 207
    listing = responses(r.content)
    expected = {"/myfed/"} | {
        "/myfed/" + quote(p.name) + ("/" if p.is_dir() else "") for p in testfed_tree.iterdir()
    }
    assert set(listing) == expected
    for href, props in listing.items():
        if href.endswith("/"):
            assert props["{LCGDM:}mode"] == "040755"
            assert props["{DAV:}getcontentlength"] == "0"
            assert props["{DAV:}iscollection"] == "1"
    assert listing["/myfed/hello.txt"]["{DAV:}getcontentlength"] == str(
        (testfed_tree / "hello.txt").stat().st_size
    )
    # A directory without the trailing slash is answered too, with the slash in its href.
    assert set(responses(propfind(http, testfed.url + "empty-dir", "1").content)) == {
        "/myfed/empty-dir/"
    }


def test_propfind_named_props(testfed: TestFederation, http: httpx.Client) -> None:
    r = propfind(http, testfed.file_url("hello.txt"), "0", DAVIX_PROPFIND)
    assert r.status_code == 207
    root = ET.fromstring(r.content)
    propstats = root.findall(".//{DAV:}propstat")
    assert [p.findtext("{DAV:}status") for p in propstats] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
    ]
    found = {e.tag for e in propstats[0].find("{DAV:}prop") or []}
    missing = {e.tag for e in propstats[1].find("{DAV:}prop") or []}
    assert missing == {"{DAV:}quota-used-bytes"}
    assert "{LCGDM:}mode" in found and "{DAV:}getetag" not in found


def test_propfind_gzip_is_chunked(testfed: TestFederation) -> None:
    request = (
        b"PROPFIND /myfed/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nAccept-Encoding: gzip\r\n"
        b"Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", testfed.port)) as s:
        s.sendall(request)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = head.decode().lower()
    assert headers.startswith("http/1.1 207")
    assert "content-encoding: gzip" in headers
    assert "transfer-encoding: chunked" in headers
    assert "content-length" not in headers
    # de-chunk, then gunzip
    data, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data, rest = data + rest[:size], rest[size + 2 :]
    assert b"/myfed/hello.txt" in gzip.decompress(data)


def test_propfind_depth_infinity_and_bad_body(testfed: TestFederation, http: httpx.Client) -> None:
    assert propfind(http, testfed.url, "infinity").status_code == 403
    assert propfind(http, testfed.url, None).status_code == 403
    assert propfind(http, testfed.url, "0", b"<propfind").status_code == 400


def test_maxlistitems(make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client) -> None:
    fed = make_testfed(testfed_tree, endpoints=1, maxlistitems=29)
    assert propfind(http, fed.url + "many/", "1").status_code == 500
    assert http.get(fed.url + "many/").status_code == 500
    assert propfind(http, fed.url + "many/", "0").status_code == 207
    assert propfind(http, fed.url + "names/", "1").status_code == 207


# --- directories ----------------------------------------------------------------------------


def test_directory_get(testfed: TestFederation, http: httpx.Client) -> None:
    r = http.get(testfed.url + "names/")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    for name in SPECIAL_NAMES:
        assert f'href="{quote(name.split("/")[1])}"'.replace("&", "&amp;") in r.text
    r = http.get(testfed.url + "names")
    assert r.status_code == 301
    assert r.headers["Location"] == testfed.url + "names/"
    r = http.get(testfed.url.rstrip("/"))
    assert r.status_code == 301 and r.headers["Location"] == testfed.url


# --- metalink -------------------------------------------------------------------------------


def test_metalink_v3_and_v4(
    testfed: TestFederation, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    url = testfed.file_url("data/block.bin") + "?metalink"
    expected = [e.base_url + "data/block.bin" for e in testfed.endpoints]
    r = http.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/metalink+xml"
    ns3 = "{http://www.metalinker.org/}"
    root = ET.fromstring(r.content)
    assert root.get("generator") == "lcgdm-dav"
    assert [u.text for u in root.iter(f"{ns3}url")] == expected
    assert root.findtext(f".//{ns3}size") == str(len(testfed_files["data/block.bin"]))
    r = http.get(url, headers={"Accept": "application/metalink4+xml"})
    assert r.headers["Content-Type"] == "application/metalink4+xml"
    ns4 = "{urn:ietf:params:xml:ns:metalink}"
    assert [u.text for u in ET.fromstring(r.content).iter(f"{ns4}url")] == expected
    # Asking for metalink without ?metalink still redirects, with the Link header.
    r = http.head(
        testfed.file_url("data/block.bin"), headers={"Accept": "application/metalink4+xml"}
    )
    assert r.status_code == 302 and "rel=describedby" in r.headers["Link"]


# --- ordering and availability --------------------------------------------------------------


def test_geo_rank_orders_redirect_and_metalink(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client
) -> None:
    fed = make_testfed(testfed_tree, geo_rank=(2, 0, 1))
    eps = fed.endpoints
    assert http.get(fed.file_url("hello.txt")).headers["Location"] == eps[1].base_url + "hello.txt"
    root = ET.fromstring(http.get(fed.file_url("hello.txt") + "?metalink").content)
    urls = [u.text for u in root.iter("{http://www.metalinker.org/}url")]
    assert urls == [eps[i].base_url + "hello.txt" for i in (1, 2, 0)]


def test_shuffle_among_ties(make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client) -> None:
    fed = make_testfed(testfed_tree, geo_rank=(0, 0, 1), shuffle=True, seed=7)
    firsts = {http.get(fed.file_url("hello.txt")).headers["Location"] for _ in range(40)}
    assert firsts == {fed.endpoints[i].base_url + "hello.txt" for i in (0, 1)}


@pytest.mark.parametrize("status", [404, 503])
def test_no_replica_online(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client, status: int
) -> None:
    fed = make_testfed(testfed_tree, endpoints=1, no_replica_status=status, health_period=30)
    fed.fault(0, "down")
    assert http.get(fed.file_url("hello.txt")).status_code == 302  # the checker has not run
    assert fed.check_health() == [False]
    r = http.get(fed.file_url("hello.txt"))
    assert r.status_code == status
    assert "Location" not in r.headers
    assert http.get(fed.file_url("hello.txt") + "?metalink").status_code == status
    assert propfind(http, fed.file_url("hello.txt"), "0").status_code == 207  # metadata still there


def test_second_hop(
    make_testfed: MakeFed, testfed_tree: Path, http: httpx.Client, testfed_files: dict[str, bytes]
) -> None:
    fed = make_testfed(testfed_tree, endpoints=1, second_hop=True)
    (ep,) = fed.endpoints
    assert ep.disk_port is not None and ep.disk_port != ep.port
    r = http.get(fed.file_url("data/block.bin"))
    assert r.headers["Location"] == f"http://127.0.0.1:{ep.port}/ep0/data/block.bin"
    hop = http.get(r.headers["Location"])
    assert hop.status_code == 302
    assert hop.headers["Location"] == f"http://127.0.0.1:{ep.disk_port}/ep0/data/block.bin"
    r = http.get(fed.file_url("data/block.bin"), follow_redirects=True)
    assert [h.status_code for h in r.history] == [302, 302]
    assert r.content == testfed_files["data/block.bin"]
    assert fed.bytes_sent(0) >= len(testfed_files["data/block.bin"])
