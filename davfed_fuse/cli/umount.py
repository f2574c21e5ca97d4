"""``davfed umount [-l] MOUNTPOINT``: unmount a davfed mount, and only a davfed mount.

Owns: the command line; the mount table and the unmounting are ``system.mounttable``'s.
A stale mount (its daemon gone) is detached lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from davfed_fuse.cli.guard import setup_cli_logging
from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import MountError
from davfed_fuse.exitcodes import Exit
from davfed_fuse.system.mounttable import find_mount, is_stale, unmount


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(prog="davfed umount", description="Unmount a davfed mount.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument(
        "-l",
        "-z",
        "--lazy",
        action="store_true",
        help="detach now even if files are open (umount -l / fusermount3 -uz)",
    )
    args = parser.parse_args(list(argv))
    setup_cli_logging()
    path = os.path.abspath(args.mountpoint)
    entry = find_mount(path)
    if entry is None:
        raise MountError(f"{path} is not mounted")
    if not entry.is_davfed:
        raise MountError(f"{path} is a {entry.fstype} mount, not davfed; use umount(8)")
    unmount(path, lazy=args.lazy or is_stale(path))
    return Exit.OK
