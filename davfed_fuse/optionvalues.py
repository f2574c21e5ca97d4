"""Mount option values: text in, a validated value out (sizes, seconds, ids, paths, ...).

Owns: the parsers of the values of ``key=value`` mount options and :func:`format_size`,
their inverse for sizes. Each parser takes the text after ``=`` and returns the value,
or raises :class:`ValueError` with a short reason (the triage in ``options`` names the
option around it). Pure functions (user and group names are looked up, nothing else
touches the system).
Must not import: anything of davfed's (a leaf).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

#: Log levels from the quietest to the most verbose (``-v`` steps along it).
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``64KiB``, ``4096`` -> bytes. Units are powers of 1024."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError("expected a size such as 4096, 512M, 20G")
    number, unit, _suffix = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def size_between(low: int, high: int) -> Callable[[str], int]:
    """A parser of sizes from ``low`` to ``high`` bytes."""

    def parse(text: str) -> int:
        value = parse_size(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {format_size(low)} and {format_size(high)}")
        return value

    return parse


def parse_block_size(text: str) -> int:
    """A block size: 4K to 64M, a multiple of 4K."""
    value = size_between(4 << 10, 64 << 20)(text)
    if value % 4096:
        raise ValueError("must be a multiple of 4K")
    return value


def format_size(value: int) -> str:
    """The shortest exact spelling of ``value`` bytes: ``20G``, ``512M``, ``1000``."""
    for unit in "TGMK":
        factor = _SIZE_UNITS[unit.lower()]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_min_free(text: str) -> tuple[int, float]:
    """A free-space reserve: ``5%`` of the filesystem (0 to 50) or a size (``2G``).

    Returns ``(bytes, percent)`` with one of them 0.
    """
    text = text.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError("expected a percentage such as 5% or a size such as 2G") from None
        if not 0 <= percent <= 50:
            raise ValueError("must be between 0% and 50%")
        return (0, percent)
    return (size_between(0, 1 << 60)(text), 0.0)


def format_min_free(value: tuple[int, float]) -> str:
    """The inverse of :func:`parse_min_free`."""
    size, percent = value
    return f"{percent:g}%" if percent or not size else format_size(size)


def seconds(minimum: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """A parser of finite seconds (``30``, ``2.5s``) from ``minimum`` (or above it)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip().removesuffix("s"))
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number of seconds")
        if value < minimum or (not inclusive and value == minimum):
            bound = "at least" if inclusive else "more than"
            raise ValueError(f"must be {bound} {minimum:g} seconds")
        return value

    return parse


def integer(low: int, high: int) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def parse_umask(text: str) -> int:
    """An octal umask: ``022``, ``0022`` or ``0o022``."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits):
        raise ValueError("expected an octal umask such as 022")
    value = int(digits, 8)
    if value > 0o777:
        raise ValueError("must be at most 0777")
    return value


def parse_uid(text: str) -> int:
    """A numeric uid or a user name."""
    text = text.strip()
    if text.isdigit():
        return integer(0, 2**32 - 2)(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"no such user {text!r}") from None


def parse_gid(text: str) -> int:
    """A numeric gid or a group name."""
    text = text.strip()
    if text.isdigit():
        return integer(0, 2**32 - 2)(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no such group {text!r}") from None


def parse_abs_path(text: str) -> Path:
    """An absolute path. ``~`` is never expanded: mount units have no HOME."""
    if not text.startswith("/"):
        raise ValueError("must be an absolute path (no ~, no relative paths)")
    return Path(os.path.normpath(text))


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ValueError("expected one of debug, info, warning, error, critical")
    return level


def parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


def parse_proxy(text: str) -> str:
    """A CVMFS-style proxy list: ``http://a:3128|http://b:3128;http://c:3128;DIRECT``."""
    text = text.strip()
    if not text:
        raise ValueError("must not be empty")
    for item in re.split(r"[|;]", text):
        if item == "DIRECT":
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{item!r} is neither DIRECT nor an http(s)://host:port URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("proxy credentials must not be given inline")
    return text
