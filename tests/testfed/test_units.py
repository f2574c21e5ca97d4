"""The test federation's pure functions: signing, ranges, PROPFIND, metalink, faults, ordering."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from davfed_testfed import signing
from davfed_testfed.faults import (
    Effect,
    Fault,
    FaultError,
    effect_for,
    make_fault,
    resized_content,
)
from davfed_testfed.health import is_online, order_endpoints
from davfed_testfed.metalink import metalink_v3, metalink_v4, wants_v4
from davfed_testfed.namespace import Entry, href_of, normalize_prefix, relpath_of
from davfed_testfed.nginx import NginxSite, render_config
from davfed_testfed.propfind import (
    ALLPROP,
    DAV,
    LCGDM,
    PropRequest,
    multistatus,
    parse_propfind,
)
from davfed_testfed.ranges import Span, Unsatisfiable, Whole, decide_range

CREDS = signing.Credentials()
NOW = 1_700_000_000.0
PATH = "/ep1/dir/a%20b.txt"
HOST = "127.0.0.1:9000"


def q(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))


# --- signing --------------------------------------------------------------------------------


def test_s3v2_url_shape_and_roundtrip() -> None:
    query = q(signing.sign_s3v2("GET", PATH, NOW, 60, CREDS))
    assert list(query) == ["AWSAccessKeyId", "Expires", "Signature"]
    assert query["Expires"] == str(int(NOW) + 60)
    assert signing.verify_s3v2("GET", PATH, query, NOW + 60, CREDS) is None
    expired = signing.verify_s3v2("GET", PATH, query, NOW + 61, CREDS)
    assert expired is not None and (expired.status, expired.code) == (403, "AccessDenied")
    other = signing.verify_s3v2("GET", "/ep1/dir/other", query, NOW, CREDS)
    assert other is not None and other.code == "SignatureDoesNotMatch"
    wrong_key = signing.verify_s3v2("GET", PATH, query, NOW, signing.Credentials(secret_key="x"))
    assert wrong_key is not None and wrong_key.code == "SignatureDoesNotMatch"


def test_s3v4_url_shape_and_roundtrip() -> None:
    query = q(signing.sign_s3v4("GET", PATH, HOST, NOW, 120, CREDS))
    assert list(query) == [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ]
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Credential"] == f"{CREDS.access_key}/20231114/us-east-1/s3/aws4_request"
    assert len(query["X-Amz-Signature"]) == 64
    assert signing.verify_s3v4("GET", PATH, HOST, query, NOW + 120, CREDS) is None
    head = signing.verify_s3v4("HEAD", PATH, HOST, query, NOW, CREDS)
    assert head is not None and (head.status, head.code) == (403, "SignatureDoesNotMatch")
    other_host = signing.verify_s3v4("GET", PATH, "127.0.0.1:9001", query, NOW, CREDS)
    assert other_host is not None and other_host.code == "SignatureDoesNotMatch"
    expired = signing.verify_s3v4("GET", PATH, HOST, query, NOW + 121, CREDS)
    assert expired is not None and expired.message == "Request has expired"
    missing = signing.verify_s3v4("GET", PATH, HOST, {"X-Amz-Date": "x"}, NOW, CREDS)
    assert missing is not None and missing.status == 400


def test_s3v4_matches_aws_documented_example() -> None:
    # The pre-signed URL example of the AWS SigV4 documentation ("examplebucket/test.txt").
    creds = signing.Credentials(
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    now = 1369353600.0  # 20130524T000000Z
    query = q(
        signing.sign_s3v4("GET", "/test.txt", "examplebucket.s3.amazonaws.com", now, 86400, creds)
    )
    assert query["X-Amz-Signature"] == (
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_azure_url_shape_and_roundtrip() -> None:
    query = q(signing.sign_azure(PATH, NOW, 30, CREDS))
    assert list(query) == ["sv", "st", "se", "sr", "sp", "sig"]
    assert (query["sr"], query["sp"], query["sv"]) == ("b", "r", "2016-05-31")
    assert query["se"] == "2023-11-14T22:13:50Z"
    assert signing.verify_azure(PATH, query, NOW + 30, CREDS) is None
    expired = signing.verify_azure(PATH, query, NOW + 31, CREDS)
    assert expired is not None and expired.code == "AuthenticationFailed"
    tampered = signing.verify_azure(PATH, {**query, "sp": "rw"}, NOW, CREDS)
    assert tampered is not None and tampered.code == "AuthenticationFailed"


@pytest.mark.parametrize("kind", signing.SIGNED_KINDS)
def test_expiry_is_read_from_the_url(kind: signing.SignedKind) -> None:
    query = q(signing.sign(kind, "GET", PATH, HOST, NOW, 77, CREDS))
    assert signing.expiry_of(query) == int(NOW) + 77


def test_canonical_path_ignores_client_encoding_choices() -> None:
    assert signing.canonical_path("/ep0/a b~c") == signing.canonical_path("/ep0/a%20b%7Ec")
    assert signing.canonical_path("/ep0/é#?") == "/ep0/%C3%A9%23%3F"


# --- ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "decision"),
    [
        (None, Whole()),
        ("bytes=0-9", Span(0, 9)),
        ("bytes=10-", Span(10, 99)),
        ("bytes=-10", Span(90, 99)),
        ("bytes=-1000", Span(0, 99)),
        ("bytes=50-1000", Span(50, 99)),
        ("bytes=99-99", Span(99, 99)),
        ("bytes=100-", Unsatisfiable()),
        ("bytes=100-200", Unsatisfiable()),
        ("bytes=-0", Unsatisfiable()),
        ("bytes=0-1,5-6", Whole()),
        ("bytes=9-1", Whole()),
        ("items=0-1", Whole()),
    ],
)
def test_decide_range(header: str | None, decision: object) -> None:
    assert decide_range(header, 100) == decision


def test_span_content_range() -> None:
    assert Span(5, 9).content_range(100) == "bytes 5-9/100"
    assert Span(5, 9).length == 5


# --- namespace ------------------------------------------------------------------------------


def test_relpath_of() -> None:
    assert relpath_of("/myfed", "/myfed") == ""
    assert relpath_of("/myfed", "/myfed/") == ""
    assert relpath_of("/myfed", "/myfed/a//b/") == "a/b"
    assert relpath_of("/myfed", "/myfedx/a") is None
    assert relpath_of("/myfed", "/other") is None
    assert relpath_of("/myfed", "/myfed/a/../b") is None
    assert relpath_of("", "/a") == "a"
    assert normalize_prefix("myfed/") == "/myfed"
    assert normalize_prefix("/") == ""


def test_href_of_encodes_and_marks_collections() -> None:
    assert href_of("/myfed", "", True) == "/myfed/"
    assert href_of("/myfed", "d", True) == "/myfed/d/"
    assert href_of("/myfed", "a b#?%é", False) == "/myfed/a%20b%23%3F%25%C3%A9"


# --- PROPFIND -------------------------------------------------------------------------------

DAVIX_BODY = b"""<?xml version="1.0" encoding="utf-8" ?>
<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop>
<D:displayname/><D:getlastmodified/><D:creationdate/><D:getcontentlength/>
<D:quota-used-bytes/><D:resourcetype/><L:mode/><D:owner/><D:group/>
</D:prop></D:propfind>"""

FILE = Entry("d/f.bin", False, 1234, 0x536115EB, 0xCA36)
DIR = Entry("d", True, 0, 1_600_000_000, 7)


def test_parse_propfind() -> None:
    assert parse_propfind(b"") == ALLPROP
    assert parse_propfind(b'<propfind xmlns="DAV:"><allprop/></propfind>') == ALLPROP
    request = parse_propfind(DAVIX_BODY)
    assert request.props is not None
    assert (DAV, "quota-used-bytes") in request.props
    assert (LCGDM, "mode") in request.props
    with pytest.raises(ValueError):
        parse_propfind(b"<propfind")
    with pytest.raises(ValueError):
        parse_propfind(b'<other xmlns="DAV:"/>')


def _props(response: ET.Element) -> dict[str, tuple[str, str]]:
    out = {}
    for propstat in response.findall("{DAV:}propstat"):
        status = propstat.findtext("{DAV:}status") or ""
        for prop in propstat.find("{DAV:}prop") or []:
            out[prop.tag] = (status, "".join(prop.itertext()))
    return out


def test_multistatus_allprop_is_lcgdm_shaped() -> None:
    body = multistatus([("/myfed/d/", DIR, "d"), ("/myfed/d/f.bin", FILE, "f.bin")], ALLPROP)
    assert body.startswith(
        b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
    )
    assert b'xmlns:lcgdm="LCGDM:" xmlns:lp3="LCGDM:" xmlns:lp1="DAV:"' in body
    root = ET.fromstring(body)
    d, f = root.findall("{DAV:}response")
    assert d.findtext("{DAV:}href") == "/myfed/d/"
    dprops, fprops = _props(d), _props(f)
    ok = "HTTP/1.1 200 OK"
    assert dprops["{LCGDM:}mode"] == (ok, "040755")
    assert dprops["{DAV:}getcontentlength"] == (ok, "0")
    assert d.find(".//{DAV:}resourcetype/{DAV:}collection") is not None
    assert fprops["{LCGDM:}mode"] == (ok, "0100644")
    assert fprops["{DAV:}getetag"] == (ok, "ca36-536115eb")
    assert fprops["{DAV:}getcontentlength"] == (ok, "1234")
    assert fprops["{DAV:}getlastmodified"] == (ok, "Wed, 30 Apr 2014 15:25:31 GMT")
    assert fprops["{DAV:}creationdate"] == (ok, "2014-04-30T15:25:31Z")
    for empty in ("guid", "sumtype", "sumvalue"):
        assert fprops[f"{{LCGDM:}}{empty}"] == (ok, "")
    assert fprops["{DAV:}owner"] == (ok, "0") and fprops["{DAV:}group"] == (ok, "0")
    assert f.find(".//{DAV:}resourcetype/{DAV:}collection") is None


def test_multistatus_named_props_split_found_and_missing() -> None:
    root = ET.fromstring(
        multistatus([("/myfed/d/f.bin", FILE, "f.bin")], parse_propfind(DAVIX_BODY))
    )
    (response,) = root.findall("{DAV:}response")
    statuses = [p.findtext("{DAV:}status") for p in response.findall("{DAV:}propstat")]
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]
    props = _props(response)
    assert props["{DAV:}quota-used-bytes"][0] == "HTTP/1.1 404 Not Found"
    assert props["{LCGDM:}mode"] == ("HTTP/1.1 200 OK", "0100644")
    assert "{DAV:}getetag" not in props  # not asked for
    custom = PropRequest(((("urn:x"), "thing"),))
    root = ET.fromstring(multistatus([("/f", FILE, "f")], custom))
    assert root.find(".//{urn:x}thing") is not None


# --- metalink -------------------------------------------------------------------------------

URLS = ["http://127.0.0.1:1/ep0/a", "http://127.0.0.1:2/ep1/a?x=1&y=2"]


def test_metalink_v3_is_lcgdm_shaped() -> None:
    body = metalink_v3("/myfed/a", 42, URLS, NOW)
    assert b'generator="lcgdm-dav"' in body and b'xmlns:lcgdm="LCGDM:"' in body
    root = ET.fromstring(body)
    ns = "{http://www.metalinker.org/}"
    assert root.get("version") == "3.0"
    file = root.find(f"{ns}files/{ns}file")
    assert file is not None and file.get("name") == "/myfed/a"
    assert file.findtext(f"{ns}size") == "42"
    assert [u.text for u in file.findall(f"{ns}resources/{ns}url")] == URLS


def test_metalink_v4_is_rfc5854() -> None:
    root = ET.fromstring(metalink_v4("/myfed/a", 42, URLS, NOW))
    ns = "{urn:ietf:params:xml:ns:metalink}"
    file = root.find(f"{ns}file")
    assert file is not None and file.findtext(f"{ns}size") == "42"
    urls = file.findall(f"{ns}url")
    assert [u.text for u in urls] == URLS
    assert [u.get("priority") for u in urls] == ["1", "2"]
    assert wants_v4("application/metalink4+xml") and not wants_v4("application/metalink+xml")
    assert not wants_v4(None)


# --- faults ---------------------------------------------------------------------------------


def test_make_fault_validates() -> None:
    assert make_fault("slow", {"delay": "1.5"}) == Fault("slow", delay=1.5)
    assert make_fault("delete", {"path": "/a/b"}) == Fault("delete", path="a/b")
    for kind, params in [
        ("explode", {}),
        ("delete", {}),
        ("resize", {"size": 3}),
        ("down", {"path": "a"}),
        ("slow", {"after": 3}),
        ("status", {"status": 700}),
        ("cut", {"after": -1}),
        ("slow", {"delay": "soon"}),
    ]:
        with pytest.raises(FaultError):
            make_fault(kind, params)


def test_effect_for_combines_matching_faults() -> None:
    faults = [
        Fault("slow", delay=0.3),
        Fault("delete", path="a"),
        Fault("cut", path="b", after=10),
        Fault("status", path="c", status=500),
    ]
    assert effect_for(faults, "a") == Effect(delay=0.3, deleted=True)
    assert effect_for(faults, "b") == Effect(delay=0.3, cut_after=10)
    assert effect_for(faults, "c") == Effect(delay=0.3, status=500)
    assert effect_for([], "a").is_clean


def test_resized_content() -> None:
    assert resized_content(b"abcdef", 3) == b"abc"
    grown = resized_content(b"abc", 40)
    assert len(grown) == 40 and grown.startswith(b"abc")


# --- health and ordering --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "latency", "online"),
    [
        ("dav", 200, 0.1, True),
        ("dav", 302, 0.1, True),
        ("dav", 404, 0.1, True),
        ("dav", 403, 0.1, False),
        ("dav", 503, 0.1, False),
        ("dav", None, 0.1, False),
        ("dav", 200, 0.6, False),
        ("s3v4", 400, 0.1, False),
        ("azure", 400, 0.1, True),
    ],
)
def test_is_online(kind: str, status: int | None, latency: float, online: bool) -> None:
    assert is_online(kind, status, latency, 0.5) is online


def test_order_endpoints() -> None:
    rng = random.Random(1)
    assert order_endpoints([0, 1, 2], [True] * 3, False, rng) == [0, 1, 2]
    assert order_endpoints([2, 0, 1], [True] * 3, False, rng) == [1, 2, 0]
    assert order_endpoints([2, 0, 1], [True, False, True], False, rng) == [2, 0]
    firsts = {order_endpoints([0, 0, 1], [True] * 3, True, rng)[0] for _ in range(50)}
    assert firsts == {0, 1}
    assert all(order_endpoints([0, 0, 1], [True] * 3, True, rng)[2] == 2 for _ in range(20))


def test_nginx_config_second_hop_and_faults(tmp_path: Path) -> None:
    site = NginxSite(3, 8001, 8002, tmp_path, 8003, as_root=False, dav_ext=True)
    conf = render_config(site)
    assert "listen 127.0.0.1:8001" in conf and "listen 127.0.0.1:8002" in conf
    assert "return 302 http://127.0.0.1:8001$request_uri;" in conf
    assert "location /ep3/ {" in conf and "sendfile on;" in conf
    assert "proxy_pass http://127.0.0.1:8003;" in conf and "proxy_buffering off;" in conf
    assert "user root" not in conf
    no_hop = render_config(NginxSite(0, 8001, None, tmp_path, 8003, as_root=True, dav_ext=False))
    assert "8002" not in no_hop and "user root root;" in no_hop and "dav_ext" not in no_hop
