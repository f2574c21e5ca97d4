"""``davfed testfed DATA_DIR --port PORT [...]``: the test federation, when it is installed.

Owns: the one import of ``davfed_testfed`` (an optional extra: aiohttp and all, which a VM
that only mounts does not have), made only when this command runs, and the one line that
says how to install it when it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from davfed_fuse.errors import UsageError

TESTFED_MISSING = (
    "the test federation is not installed: install davfed with its extra, "
    "pip install 'davfed[testfed]' (from a checkout: pip install '.[testfed]')"
)


def main(argv: Sequence[str]) -> int:
    try:
        from davfed_testfed import cli
    except ImportError as exc:
        raise UsageError(f"{TESTFED_MISSING} ({exc})") from None
    return cli.main(argv)
