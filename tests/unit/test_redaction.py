"""No signature or token of any signed-URL scheme survives redaction, wherever a URL is printed.

One table of real-shaped signed URLs (S3 v2 and v4, GCS v4, Azure SAS, CloudFront,
Swift temp URLs, dCache macaroons, OAuth) is pushed through every printer:
``redact_url`` (exception messages), ``redact`` (free text), text and JSON log lines
(message, extra fields, exception text), and the mount-option check.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.config import Config
from davfed_fuse.errors import BadResponse, UsageError
from davfed_fuse.logs import setup_logging
from davfed_fuse.net.http import (
    TargetFailed,
    body_complete,
    body_failed,
    body_too_long,
    redirect_target,
)
from davfed_fuse.net.transport import Transport
from davfed_fuse.options import validate_url
from davfed_fuse.redaction import REDACTED, SECRET_QUERY_PARAMS, redact, redact_url

# (scheme, URL, secret values that must disappear, parameters that must stay)
SIGNED = [
    (
        "s3v2",
        "https://s3.example/bucket/f.root?AWSAccessKeyId=AKIAV2SECRETID&Expires=1893456000"
        "&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D",
        ["AKIAV2SECRETID", "vjbyPxybdZaNmGa"],
        ["Expires=1893456000"],
    ),
    (
        "s3v4",
        "https://s3.example/bucket/f.root?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAV4SECRETID%2F20261205%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20261205T010203Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Security-Token=FQoGZXIvYXdzSESSION"
        "&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        ["AKIAV4SECRETID", "FQoGZXIvYXdzSESSION", "fe5f80f77d5fa3beca038a248ff027d0445342fe"],
        ["X-Amz-Expires=3600", "X-Amz-Date=20261205T010203Z"],
    ),
    (
        "gcs-v4",
        "https://storage.googleapis.com/bucket/f.root?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20261205%2Fauto%2Fstorage"
        "%2Fgoog4_request&X-Goog-Date=20261205T010203Z&X-Goog-Expires=900"
        "&X-Goog-SignedHeaders=host&X-Goog-Signature=8a4b1c9e0d7f6a5b4c3d2e1f0a9b8c7d",
        ["svc%40proj", "8a4b1c9e0d7f6a5b4c3d2e1f0a9b8c7d"],
        ["X-Goog-Expires=900"],
    ),
    (
        "azure-sas",
        "https://acct.blob.core.windows.net/cont/f.root?sv=2021-08-06&se=2026-12-06T00%3A00%3A00Z"
        "&sr=b&sp=r&sig=C2Fzc2lnbmF0dXJlQVpVUkU%3D",
        ["C2Fzc2lnbmF0dXJlQVpVUkU"],
        ["sv=2021-08-06", "sp=r"],
    ),
    (
        "cloudfront",
        "https://d111111abcdef8.cloudfront.net/f.root?Expires=1893456000"
        "&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiUE9MSUNZIn1dfQ__"
        "&Signature=Nql641NHEUkUaXQHZINK1FZ~SYeUSoBJMxjdgqrzIdzV2gyEXPDNv0pYdWJkflDK"
        "&Key-Pair-Id=APKAEIBAERJR2EXAMPLE",
        ["eyJTdGF0ZW1lbnQiOlt7", "Nql641NHEUkUaXQHZINK1FZ", "APKAEIBAERJR2EXAMPLE"],
        ["Expires=1893456000"],
    ),
    (
        "swift-tempurl",
        "https://swift.example/v1/AUTH_acct/cont/f.root"
        "?temp_url_sig=da39a3ee5e6b4b0d3255bfef95601890afd80709&temp_url_expires=1893456000",
        ["da39a3ee5e6b4b0d3255bfef95601890afd80709"],
        ["temp_url_expires=1893456000"],
    ),
    (
        "macaroon",
        "https://dcache.example/pnfs/f.root?authz=MDAxY2xvY2F0aW9uIE9wdGlvbmFsLmVtcHR5",
        ["MDAxY2xvY2F0aW9uIE9wdGlvbmFsLmVtcHR5"],
        [],
    ),
    (
        "oauth",
        "https://x.example/f.root?access_token=eyJhbGciOiJSUzI1NiJ9.tok.sig&x=1",
        ["eyJhbGciOiJSUzI1NiJ9.tok.sig"],
        ["x=1"],
    ),
]
IDS = [row[0] for row in SIGNED]


def assert_clean(text: str, gone: list[str], kept: list[str]) -> None:
    for secret in gone:
        assert secret not in text, f"{secret!r} leaked in {text!r}"
    for part in kept:
        assert part in text, f"{part!r} lost from {text!r}"


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
def test_redact_url_hides_every_scheme(
    scheme: str, url: str, gone: list[str], kept: list[str]
) -> None:
    out = redact_url(url)
    assert_clean(out, gone, kept)
    assert out.split("?")[0] == url.split("?")[0]  # the path stays readable


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
def test_redact_free_text_hides_every_scheme(
    scheme: str, url: str, gone: list[str], kept: list[str]
) -> None:
    out = redact(f"GET {url} -> 403 (expired), retrying on the next replica")
    assert_clean(out, gone, kept)
    assert REDACTED in out and out.endswith("retrying on the next replica")


def test_one_list_of_secret_parameters() -> None:
    # Both printers decide from the same list: every listed key is hidden by both.
    for key in SECRET_QUERY_PARAMS:
        url = f"https://h.example/f?{key}=SECRETVALUE&keep=1"
        assert "SECRETVALUE" not in redact_url(url), key
        assert "SECRETVALUE" not in redact(url), key
        assert "keep=1" in redact_url(url) and "keep=1" in redact(url)


def test_redact_url_hides_a_password_in_the_authority() -> None:
    out = redact_url("http://alice:hunter2@squid.example:3128/")
    assert "hunter2" not in out and "alice" in out and "squid.example:3128" in out


@pytest.fixture
def log_stream() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    streams = []
    for fmt in ("text", "json"):
        stream = io.StringIO()
        config = Config(
            url="https://f.example/", mountpoint=Path("/mnt"), log_format=fmt, log_level="DEBUG"
        )
        setup_logging(config, stream=stream)
        streams.append((stream, logging.getLogger().handlers[:]))
    # setup_logging replaces the root's handlers: keep both formatters attached.
    root.handlers[:] = [h for _, hs in streams for h in hs]
    yield streams[0][0], streams[1][0]
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
def test_log_lines_hide_every_scheme(
    log_stream: tuple[io.StringIO, io.StringIO],
    scheme: str,
    url: str,
    gone: list[str],
    kept: list[str],
) -> None:
    text, js = log_stream
    log = logging.getLogger("davfed_fuse.net.federation")
    log.warning("replica %s failed", url, extra={"url.full": url, "event.action": "read"})
    try:
        raise OSError(f"connection reset by {url}")
    except OSError:
        log.exception("read failed")
    assert_clean(text.getvalue(), gone, [])
    assert_clean(js.getvalue(), gone, [])
    docs = [json.loads(line) for line in js.getvalue().splitlines()]
    assert len(docs) == 2
    assert_clean(docs[0]["url.full"], gone, kept)
    assert_clean(docs[1]["error.message"], gone, [])


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
def test_a_signed_url_as_the_mount_url_is_refused_without_echo(
    scheme: str, url: str, gone: list[str], kept: list[str]
) -> None:
    with pytest.raises(UsageError) as info:
        validate_url(url)
    assert_clean(str(info.value), gone, [])


# --- exception messages -------------------------------------------------------------


def transfer_errors(url: str) -> list[str]:
    """The messages of every error the HTTP rules build from a replica's URL."""
    messages = [
        str(body_failed(url, 10, ConnectionResetError("reset"), timed_out=False).error),
        str(body_failed(url, 10, TimeoutError(), timed_out=True).error),
        str(body_too_long(url, 100).error),
    ]
    with pytest.raises(TargetFailed) as short:
        body_complete(url, 10, 100)
    messages.append(str(short.value.error))
    with pytest.raises(BadResponse) as no_location:
        redirect_target(url, None, 302)
    messages.append(str(no_location.value))
    with pytest.raises(BadResponse) as not_http:
        redirect_target(url, "ftp://elsewhere/f", 302)
    messages.append(str(not_http.value))
    return messages


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
def test_error_messages_hide_every_scheme(
    scheme: str, url: str, gone: list[str], kept: list[str]
) -> None:
    for message in transfer_errors(url):
        assert_clean(message, gone, kept)


@pytest.mark.parametrize(("scheme", "url", "gone", "kept"), SIGNED, ids=IDS)
async def test_a_real_failed_transfer_hides_every_scheme(
    scheme: str, url: str, gone: list[str], kept: list[str]
) -> None:
    # The production transport, against a port nothing listens on: the message a
    # reader's failed replica carries into the logs.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/{url.split('/', 3)[3]}"
    transport = Transport(timeout=2, connect_timeout=2)
    try:
        with pytest.raises(TargetFailed) as failed:
            await transport.get_range(dead, 0, 10, 100, memoryview(bytearray(10)))
    finally:
        transport.close()
    assert_clean(str(failed.value.error), gone, [])
    assert_clean(repr(failed.value), gone, [])
