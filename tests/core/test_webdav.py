"""PROPFIND parsing and path encoding (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from davfed_fuse.errors import BadResponse
from davfed_fuse.net.webdav import (
    href_to_path,
    parse_http_date,
    parse_iso_date,
    parse_metalink,
    parse_multistatus,
    quote_path,
    split_listing,
    url_for,
)

LCGDM_SAMPLE = b"""<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:">
<D:response xmlns:lcgdm="LCGDM:" xmlns:lp3="LCGDM:" xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">
<D:href>/myfed/data/</D:href>
<D:propstat><D:prop>
<lcgdm:type>0</lcgdm:type>
<lp1:resourcetype><D:collection/></lp1:resourcetype>
<lp1:creationdate>2014-04-30T15:25:31Z</lp1:creationdate>
<lp1:getlastmodified>Wed, 30 Apr 2014 15:25:31 GMT</lp1:getlastmodified>
<lp1:getetag>ca36-536115eb</lp1:getetag>
<lp1:getcontentlength>0</lp1:getcontentlength>
<lp1:iscollection>1</lp1:iscollection>
<lp3:mode>040755</lp3:mode>
</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
</D:response>
<D:response xmlns:lcgdm="LCGDM:" xmlns:lp3="LCGDM:" xmlns:lp1="DAV:">
<D:href>/myfed/data/run%201%23a.root</D:href>
<D:propstat><D:prop>
<lp1:resourcetype/>
<lp1:getlastmodified>Thu, 01 May 2014 00:00:00 GMT</lp1:getlastmodified>
<lp1:getetag>ca37-53618f80</lp1:getetag>
<lp1:getcontentlength>173272912</lp1:getcontentlength>
<lp3:mode>0100644</lp3:mode>
</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
<D:propstat><D:prop><D:quota-used-bytes/></D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
</D:response>
<D:response>
<D:href>/myfed/data/unstattable</D:href>
<D:propstat><D:prop><D:getcontentlength/></D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
</D:response>
</D:multistatus>
"""


def test_lcgdm_listing_is_parsed() -> None:
    entries = parse_multistatus(LCGDM_SAMPLE, "/myfed/")
    parent, children = split_listing(entries, "data")
    assert parent is not None and parent.is_dir and parent.size == 0
    assert parent.mtime_ns == 1398871531 * 10**9
    assert [c.name for c in children] == ["run 1#a.root"]
    child = children[0]
    assert not child.is_dir
    assert child.size == 173272912
    assert child.etag == "ca37-53618f80"
    assert child.mtime_ns == 1398902400 * 10**9
    assert child.path == "data/run 1#a.root"


def test_entities_are_refused() -> None:
    bomb = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<D:multistatus xmlns:D="DAV:"><D:response><D:href>&lol2;</D:href></D:response></D:multistatus>"""
    with pytest.raises(BadResponse, match="malformed"):
        parse_multistatus(bomb, "/")


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<html><body>502 Bad Gateway</body></html>",
        b'<D:multistatus xmlns:D="DAV:"><D:response><D:propstat/></D:response></D:multistatus>',
    ],
)
def test_malformed_answers_are_refused(body: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_multistatus(body, "/")


def _one_file(href: str, length: str = "1", date: str = "Wed, 30 Apr 2014 15:25:31 GMT") -> bytes:
    return (
        '<D:multistatus xmlns:D="DAV:"><D:response>'
        f"<D:href>{href}</D:href><D:propstat><D:prop>"
        f"<D:getcontentlength>{length}</D:getcontentlength>"
        f"<D:getlastmodified>{date}</D:getlastmodified>"
        "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        "</D:response></D:multistatus>"
    ).encode()


@pytest.mark.parametrize("length", ["-1", "abc", str(1 << 60)])
def test_absurd_sizes_are_refused(length: str) -> None:
    with pytest.raises(BadResponse, match="getcontentlength"):
        parse_multistatus(_one_file("/f", length), "/")


@pytest.mark.parametrize("href", ["/a%2Fb", "/a%00b", "/a/%2E%2E/b", "/other/f"])
def test_hostile_names_are_refused(href: str) -> None:
    with pytest.raises(BadResponse):
        parse_multistatus(_one_file(href), "/a/")


def test_absurd_dates_become_the_epoch() -> None:
    (entry,) = parse_multistatus(_one_file("/f", date="Fri, 01 Jan 9999 00:00:00 GMT"), "/")
    assert entry.mtime_ns == 0
    assert parse_http_date("yesterday") == 0
    assert parse_iso_date("2014-04-30T15:25:31+02:00") == (1398871531 - 7200) * 10**9


def test_absolute_hrefs_and_encoded_roots() -> None:
    assert href_to_path("http://h:8080/my%20fed/x/y%3Fz", "/my fed/") == "x/y?z"
    assert href_to_path("/my%20fed/", "/my%20fed") == ""


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=40,
).filter(lambda n: n not in (".", ".."))


@given(st.lists(names, min_size=1, max_size=4))
def test_paths_round_trip_through_urls(segments: list[str]) -> None:
    path = "/".join(segments)
    url = url_for("http://127.0.0.1:1/myfed/", path)
    assert " " not in url and "#" not in url and "?" not in url
    assert href_to_path(url, "/myfed/") == path
    assert quote_path(path).count("/") == path.count("/")


def test_metalinks_v3_and_v4_keep_document_order() -> None:
    v3 = b"""<?xml version="1.0" encoding="UTF-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/" xmlns:lcgdm="LCGDM:"
 generator="lcgdm-dav">
 <files><file name="/lhcb/L"><size>173272912</size>
  <resources><url type="https">https://test-kit.test.de:2880/pnfs/test.file</url>
             <url type="https">https://test.grid.sara.nl:2882/pnfs/test.file</url></resources>
 </file></files></metalink>"""
    assert parse_metalink(v3) == [
        "https://test-kit.test.de:2880/pnfs/test.file",
        "https://test.grid.sara.nl:2882/pnfs/test.file",
    ]
    v4 = b"""<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="f"><size>3</size>
<url priority="1">http://b/f?X-Amz-Signature=1</url><url priority="2">ftp://no/f</url>
<url priority="3">http://a/f</url></file></metalink>"""
    assert parse_metalink(v4) == ["http://b/f?X-Amz-Signature=1", "http://a/f"]
    with pytest.raises(BadResponse):
        parse_metalink(b"<html/>")
    with pytest.raises(BadResponse):
        parse_metalink(b'<!DOCTYPE x [<!ENTITY a "b">]><metalink>&a;</metalink>')
