"""Exit statuses of every davfed command: the one table.

Owns: the numbers a shell script or mount(8) sees. mount(8) fixes 0, 1 and 32
for mount helpers (``mount.davfed``, ``davfed mount``); the other commands use
2 and 3 for "ran, but the result is bad", as ``diff`` and ``cmp`` do; 130 is the
shell's number for a command stopped by Ctrl-C (128 + SIGINT).
Must not import: anything (a pure module).
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    #: A bad command line, option or configuration (mount(8): "incorrect invocation");
    #: ``cache stats|clean``: a cache whose index cannot be read.
    USAGE = 1
    #: ``prefetch``: a file could not be read. ``verify``: a checksum does not match.
    FAILED = 2
    #: ``verify``: a file could not be verified (federation or file unreadable), no mismatch.
    ERROR = 3
    #: mount(8): "mount failure"; ``cache stats|clean``: the cache is in use.
    MOUNT = 32
    #: Interrupted by Ctrl-C (SIGINT).
    INTERRUPTED = 130
