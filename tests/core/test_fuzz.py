"""Fuzzing the parsers of what a federation sends: only values or BadResponse come out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from davfed_fuse.errors import BadResponse
from davfed_fuse.net.webdav import parse_metalink, parse_multistatus

TAGS = [
    "href",
    "propstat",
    "prop",
    "status",
    "getcontentlength",
    "getlastmodified",
    "resourcetype",
    "collection",
    "getetag",
    "response",
    "multistatus",
]


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    """Multistatus-shaped documents with random nesting, texts and junk."""

    def element(depth: int) -> str:
        tag = draw(st.sampled_from(TAGS))
        prefix = draw(st.sampled_from(["D:", "lp1:", "", "x:"]))
        if depth > 3 or draw(st.booleans()):
            text = draw(st.text(max_size=30)).replace("&", "&amp;").replace("<", "&lt;")
            inner = text
        else:
            inner = "".join(element(depth + 1) for _ in range(draw(st.integers(0, 3))))
        return f"<{prefix}{tag}>{inner}</{prefix}{tag}>"

    body = "".join(element(1) for _ in range(draw(st.integers(0, 4))))
    root = draw(st.sampled_from(["D:multistatus", "multistatus", "D:response"]))
    junk = draw(st.sampled_from(["", "<!-- c -->", "<?pi x?>", "&bogus;", "<![CDATA[x]]>"]))
    return (
        f'<?xml version="1.0"?><{root} xmlns:D="DAV:" xmlns:lp1="DAV:" xmlns:x="X:">'
        f"{junk}{body}</{root}>"
    ).encode()


def survives(parse: object, body: bytes) -> None:
    try:
        result = parse(body)  # type: ignore[operator]
    except BadResponse:
        return
    assert isinstance(result, list)


@settings(max_examples=400, deadline=None)
@given(xml_documents())
def test_structured_multistatus_fuzz(body: bytes) -> None:
    survives(lambda b: parse_multistatus(b, "/myfed/"), body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_fuzz(body: bytes) -> None:
    survives(lambda b: parse_multistatus(b, "/"), body)
    survives(parse_metalink, body)


def test_a_huge_document_is_refused_before_parsing() -> None:
    body = b"<D:multistatus xmlns:D='DAV:'>" + b" " * (65 << 20) + b"</D:multistatus>"
    with pytest.raises(BadResponse, match="too large"):
        parse_multistatus(body, "/")
