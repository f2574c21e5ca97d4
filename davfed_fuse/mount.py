"""The mount daemon: one trio run that serves one FUSE mount.

Owns: the lifecycle of a mount (pyfuse3 init, readiness report, signals,
clean unmount). Placeholder until the FUSE layer lands.
"""

from __future__ import annotations

import os

from davfed_fuse.config import Config


def run(config: Config, ready_fd: int | None = None) -> int:
    """Serve ``config.mountpoint`` in the foreground until unmounted or signalled.

    When the mount is live and one metadata request to the federation
    succeeded, writes ``READY\\n`` to ``ready_fd`` (if given) and closes it;
    on a failure before that, writes ``ERROR <one line>\\n`` and returns 32.
    Returns 0 after a clean unmount.
    """
    if ready_fd is not None:
        os.write(ready_fd, b"ERROR the FUSE layer is not implemented yet\n")
        os.close(ready_fd)
    return 32
