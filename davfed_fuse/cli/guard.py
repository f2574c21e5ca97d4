"""How every davfed command ends and speaks: one line on stderr, one exit status.

Owns: the rule that a user error is one line ``davfed: <message>`` on stderr, never a
traceback, and the exit status of each kind of error (:class:`UsageError` 1,
any other :class:`DavfedError` 32, Ctrl-C 130); the stderr logging of the short-lived
commands (``davfed: <message>``, secrets redacted).
Must not import: pyfuse3, trio, httpx (the mount helper runs through here).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from davfed_fuse.errors import DavfedError, UsageError
from davfed_fuse.exitcodes import Exit

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """``exc``'s message with its whitespace (newlines too) folded to single spaces."""
    return " ".join(str(exc).split()) or type(exc).__name__


def guard(run: Callable[[], int]) -> int:
    """Run a command; turn davfed's errors into ``davfed: <message>`` and their exit status."""
    try:
        return run()
    except UsageError as exc:
        print(f"davfed: {one_line(exc)}", file=sys.stderr)
        return Exit.USAGE
    except DavfedError as exc:
        print(f"davfed: {one_line(exc)}", file=sys.stderr)
        return Exit.MOUNT
    except KeyboardInterrupt:
        print("davfed: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED


def setup_cli_logging(verbose: int = 0) -> None:
    """Warnings of the short-lived commands go to stderr as ``davfed: ...``."""
    from davfed_fuse.logs import RedactionFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(logging.Formatter("davfed: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        log.warning("warning: %s", warning)
