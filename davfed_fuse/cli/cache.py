"""``davfed cache stats|clean [--cache-dir DIR] [--json]``: the block cache from outside.

Owns: the command line; reading and cleaning the caches is ``cache.stats``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from davfed_fuse.cache import stats as cachestats
from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.config import default_cache_dir


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed cache",
        description="stats: size, blocks, files, hits, misses, hit rate and bytes fetched of "
        "each federation's cache (works while mounted). clean: drop every cached block "
        "(refused while a daemon uses the cache).",
        epilog="Exit status: 0 done, 1 usage error or unreadable cache, "
        "32 clean refused (cache in use by a mount). docs/prefetch.md",
    )
    parser.add_argument("action", choices=["stats", "clean"])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="the mounts' cache_dir (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="stats as one JSON object")
    args = parser.parse_args(list(argv))
    if args.action == "stats":
        return cachestats.stats_command(args.cache_dir, as_json=args.json)
    return cachestats.clean_command(args.cache_dir, as_json=args.json)
