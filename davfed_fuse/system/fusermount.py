"""Why a FUSE mount failed, in fusermount3's own words.

Owns: catching what libfuse and fusermount3 write to file descriptor 2 while a mount
is made (``pyfuse3.init`` raises only "fuse_session_mount failed"; the reason, such as
"option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf" or
"user has no write access to mountpoint", goes to stderr, which a daemon started by the
mount helper has on /dev/null), and picking the reason out of it (:func:`fuse_reason`).
What was caught is written on to the real stderr as well, so nothing is lost.
Must not import: pyfuse3, trio, httpx, or any davfed module.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

#: Prefixes of the lines libfuse and fusermount(3) write, the most telling first.
_PREFIXES = ("fusermount3:", "fusermount:", "fuse:")


class Captured:
    """What was written to fd 2 inside :func:`capture_stderr`."""

    text = ""


@contextlib.contextmanager
def capture_stderr(limit: int = 65536) -> Iterator[Captured]:
    """Send fd 2 (and so child processes' stderr) to a temporary file inside the block.

    On leaving, fd 2 is restored, and what was caught is copied to it and kept in the
    returned :class:`Captured` (at most ``limit`` bytes).
    """
    captured = Captured()
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                with contextlib.suppress(ValueError, OSError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                sink.seek(0)
                data = sink.read(limit)
                captured.text = data.decode(errors="replace")
                if data:
                    with contextlib.suppress(OSError):
                        os.write(2, data)
    finally:
        os.close(saved)


def fuse_reason(text: str) -> str | None:
    """The reason in libfuse's / fusermount3's messages, as one line, or None.

    ``"fusermount3: user has no write access to mountpoint /mnt\\n"`` ->
    ``"user has no write access to mountpoint /mnt"``.
    """
    lines = [line.strip() for line in text.splitlines()]
    for prefix in _PREFIXES:
        found = [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]
        if found:
            return "; ".join(dict.fromkeys(found))
    return None
