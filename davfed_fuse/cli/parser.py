"""The argument parser every subcommand uses.

Owns: turning argparse's usage errors into :class:`~davfed_fuse.errors.UsageError`
(one line, exit status 1) instead of argparse's own exit 2.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from davfed_fuse.errors import UsageError


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error is a :class:`UsageError` (exit 1, one line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")
