"""Logging set-up: where log lines go, their format, and what they must never show.

Owns: :func:`setup_logging` (called once, from the command line), the JSON
line format with ECS-style keys, and the redaction of secrets (pre-signed
query strings, ``Authorization`` headers, bearer tokens, URL passwords) from
every record. Modules only do ``log = logging.getLogger(__name__)`` and pass
structured fields as ``extra={"event.action": "open", "url.path": ...}``.
Must not import: anything of davfed's but ``config`` and ``redaction``.

Where lines go: ``log_file=`` if given; else stderr, unless stderr is
/dev/null (a daemon started by the mount helper), then syslog via ``/dev/log``
so that the journal has them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from davfed_fuse.config import Config
from davfed_fuse.redaction import redact

# The attributes every LogRecord has; anything else came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RedactionFilter(logging.Filter):
    """Redact the message, its arguments and string ``extra`` fields of every record.

    Attach it to handlers (not loggers) so records from every library pass it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class TextFormatter(logging.Formatter):
    """``2026-11-26 10:33:00,123 INFO davfed_fuse.daemon.main: message``, redacted tracebacks."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ECS-style dotted keys (Filebeat ``ndjson``).

    Always: ``@timestamp`` (UTC, ms), ``log.level``, ``log.logger``, ``message``.
    Each ``extra=`` field becomes a key of its own (``event.action``,
    ``event.outcome``, ``event.duration`` in ns, ``url.path``,
    ``http.response.status_code``, ``destination.domain``, ...). An exception
    adds ``error.type``, ``error.message`` and ``error.stack_trace``.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "@timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": redact(record.getMessage()),
            "process.pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS:
                doc[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            doc["error.type"] = type(exc).__name__
            doc.setdefault("error.message", redact(str(exc)))
            doc["error.stack_trace"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


def _stderr_is_devnull() -> bool:
    try:
        err, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return (err.st_dev, err.st_ino, err.st_rdev) == (null.st_dev, null.st_ino, null.st_rdev)


def make_handler(config: Config, *, stream: TextIO | None = None) -> logging.Handler:
    """The handler :func:`setup_logging` installs, before filters and formatter."""
    if config.log_file is not None:
        return logging.handlers.WatchedFileHandler(config.log_file, encoding="utf-8")
    if stream is not None:
        return logging.StreamHandler(stream)
    if not _stderr_is_devnull() or not os.path.exists("/dev/log"):
        return logging.StreamHandler(sys.stderr)
    handler = logging.handlers.SysLogHandler(
        address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
    )
    handler.ident = f"davfed[{os.getpid()}]: "
    return handler


def setup_logging(config: Config, *, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger for ``config`` (once, from the command line).

    Replaces earlier handlers, so calling it again is harmless. ``stream``
    overrides the destination (tests). httpx and httpcore, which log every
    request URL, stay at WARNING unless the level is DEBUG.

    Returns the installed handler.
    """
    handler = make_handler(config, stream=stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.log_level)
    quiet = logging.DEBUG if config.log_level == "DEBUG" else logging.WARNING
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(quiet)
    return handler
