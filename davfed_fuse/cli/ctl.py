"""``davfed ctl MOUNTPOINT COMMAND...``: change a running mount (cvmfs_talk's role).

Owns: the command line. The commands and their checks are the daemon's
(``daemon.control.COMMANDS``: ``davfed ctl MNT help`` lists them); this only
sends the words and prints the answer.
Exit status: 0 done, 1 usage or a bad command/argument (nothing changed), 2 not a
davfed mount or no answer within 2 s.
Must not import: trio, httpx, pyfuse3.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.exitcodes import Exit
from davfed_fuse.system.control import ControlError, locate, request


def _inside(mountpoint: str, path: str) -> str:
    """A path the user gave for ``forget``, relative to the mount root."""
    if os.path.isabs(path):
        root = os.path.abspath(mountpoint).rstrip("/") + "/"
        absolute = os.path.normpath(path)
        if (absolute + "/").startswith(root):
            return absolute[len(root) :]
    return path


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed ctl",
        description="Change a running mount: log-level LEVEL; forget PATH (the next read "
        "asks the federation for a replica again); proxy info; proxy set LIST (CVMFS "
        "syntax, e.g. 'http://a:3128|http://b:3128;DIRECT'); help.",
        epilog="Exit status: 0 done, 1 bad command or argument (nothing changed), 2 not a "
        "davfed mount or no answer within 2 s. docs/operations.md",
    )
    parser.add_argument("mountpoint")
    parser.add_argument("words", nargs="+", metavar="COMMAND")
    parser.add_argument("--json", action="store_true", help="the answer as JSON")
    args = parser.parse_args(list(argv))
    words = list(args.words)
    if words[0] == "forget" and len(words) == 2:
        words[1] = _inside(args.mountpoint, words[1])
    try:
        result = request(locate(args.mountpoint), words)
    except ControlError as exc:
        print(f"davfed: {exc}", file=sys.stderr)
        return Exit.FAILED if exc.code == 2 else Exit.USAGE
    if args.json or not isinstance(result, dict | list):
        print(json.dumps(result, indent=2, sort_keys=True))
    elif isinstance(result, list):
        for item in result:
            print(f"{item['usage']:<20} {item['help']}")
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return Exit.OK
