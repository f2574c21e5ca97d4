"""Log set-up: JSON lines with ECS-style keys, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from davfed_fuse.config import Config
from davfed_fuse.logs import setup_logging
from davfed_fuse.redaction import REDACTED, redact

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def configure(log_format: str = "json", level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    config = Config(
        url="https://f.example/", mountpoint=Path("/mnt"), log_format=log_format, log_level=level
    )
    setup_logging(config, stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- redaction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (
            "GET https://s3.example/b/f?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
            "&X-Amz-Expires=3600&X-Amz-Signature=deadbeef01 -> 200",
            ["X-Amz-Expires=3600", "X-Amz-Algorithm=AWS4-HMAC-SHA256", "-> 200"],
            ["AKIA", "deadbeef01"],
        ),
        (
            "redirect to https://s.example/f?AWSAccessKeyId=AKIDX&Expires=1&Signature=abc%2Bdef",
            ["Expires=1"],
            ["AKIDX", "abc%2Bdef"],
        ),
        ("https://acct.blob.example/c/f?sv=2020&sig=Zm9vYmFy&se=2030", ["sv=2020"], ["Zm9vYmFy"]),
        ("https://dcache.example/f?authz=MDAxY2xvY2F0aW9u", [], ["MDAxY2xvY2F0aW9u"]),
        ("https://x.example/f?access_token=tok123;x=1", ["x=1"], ["tok123"]),
        (f"headers: Authorization: Bearer {TOKEN}", ["Authorization: Bearer"], [TOKEN]),
        (f"{{'authorization': 'Bearer {TOKEN}', 'range': 'bytes=0-1'}}", ["bytes=0-1"], [TOKEN]),
        ("Authorization=Basic dXNlcjpwYXNz", ["Authorization=Basic"], ["dXNlcjpwYXNz"]),
        (f"sent bearer {TOKEN} to host", ["to host"], [TOKEN]),
        ("Cookie: session=s3cr3t", ["Cookie:"], ["s3cr3t"]),
        ("proxy http://alice:hunter2@squid:3128", ["alice", "@squid:3128"], ["hunter2"]),
    ],
)
def test_redact(text: str, kept: list[str], gone: list[str]) -> None:
    out = redact(text)
    assert REDACTED in out
    for part in kept:
        assert part in out
    for part in gone:
        assert part not in out


@pytest.mark.parametrize(
    "text",
    [
        "GET https://dynafed.example/belle/file.root?metalink -> 200",
        "designation=foo signed=yes",
        "read /belle/data 0-4194304 in 12 ms",
    ],
)
def test_redact_leaves_innocent_text_alone(text: str) -> None:
    assert redact(text) == text


# --- JSON lines ------------------------------------------------------------------------


def test_json_line_has_ecs_keys_and_extras() -> None:
    stream = configure()
    logging.getLogger("davfed_fuse.federation").info(
        "read %s",
        "/belle/f",
        extra={
            "event.action": "read",
            "event.outcome": "success",
            "event.duration": 1_500_000,
            "url.path": "/belle/f",
            "http.response.status_code": 206,
            "destination.domain": "se1.example",
        },
    )
    [doc] = records(stream)
    assert doc["message"] == "read /belle/f"
    assert doc["log.level"] == "info"
    assert doc["log.logger"] == "davfed_fuse.federation"
    assert doc["event.action"] == "read"
    assert doc["event.outcome"] == "success"
    assert doc["event.duration"] == 1_500_000
    assert doc["url.path"] == "/belle/f"
    assert doc["http.response.status_code"] == 206
    assert doc["destination.domain"] == "se1.example"
    stamp = doc["@timestamp"]
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None
    assert "args" not in doc and "msg" not in doc


def test_json_exception_fields_are_redacted() -> None:
    stream = configure()
    try:
        raise RuntimeError("GET https://s.example/f?X-Amz-Signature=secretsig failed")
    except RuntimeError:
        logging.getLogger("davfed_fuse.x").exception("open failed", extra={"url.path": "/f"})
    [doc] = records(stream)
    assert doc["log.level"] == "error"
    assert doc["error.type"] == "RuntimeError"
    assert "X-Amz-Signature=" + REDACTED in doc["error.message"]
    assert "secretsig" not in stream.getvalue()
    assert "Traceback" in doc["error.stack_trace"]


def test_every_message_is_redacted_including_args_and_extras() -> None:
    stream = configure()
    log = logging.getLogger("httpx")  # a library logger, not davfed's
    log.warning(
        "redirect to %s", "https://s.example/f?sig=abc123", extra={"auth": f"Bearer {TOKEN}"}
    )
    [doc] = records(stream)
    assert "abc123" not in stream.getvalue()
    assert TOKEN not in stream.getvalue()
    assert doc["message"] == f"redirect to https://s.example/f?sig={REDACTED}"


def test_text_format_is_redacted_too() -> None:
    stream = configure("text", "INFO")
    logging.getLogger("davfed_fuse.x").info("Authorization: Bearer %s", TOKEN)
    line = stream.getvalue()
    assert "INFO davfed_fuse.x: Authorization: Bearer [REDACTED]" in line
    assert TOKEN not in line


def test_level_filters_and_http_libraries_stay_quiet() -> None:
    stream = configure("json", "INFO")
    logging.getLogger("davfed_fuse.x").debug("hidden")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/ 200")
    logging.getLogger("davfed_fuse.x").info("shown")
    assert [d["message"] for d in records(stream)] == ["shown"]


def test_log_file(tmp_path: Path) -> None:
    path = tmp_path / "davfed.log"
    config = Config(url="https://f.example/", mountpoint=Path("/mnt"), log_file=path,
                    log_format="json")  # fmt: skip
    setup_logging(config)
    logging.getLogger("davfed_fuse.x").warning("to the file", extra={"event.action": "mount"})
    logging.getLogger().handlers[0].flush()
    [doc] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (doc["message"], doc["event.action"]) == ("to the file", "mount")
