"""Mount option triage: ``-o`` strings in, a validated :class:`Config` out.

Owns: the one table (:data:`OPTIONS`) that says what happens to every mount
option davfed can receive, from mount(8), ``/etc/fstab``, cloud-init, systemd
or a user, and the parsers that validate option values. Everything here is a
pure function of its arguments (user and group names are looked up, nothing
else touches the system).
Must not import: pyfuse3, trio, httpx, or any davfed module but ``config``,
``errors`` and ``logs``.

Each option falls into one of five kinds:

* ``DROP``: a word meant for mount(8), fstab or systemd (``defaults``,
  ``_netdev``, ``nofail``, ``x-systemd.*``, ...). Accepted and ignored; libfuse
  would otherwise die with "unknown option".
* ``IGNORE``: accepted with a warning, because davfed decides it itself
  (``fsname=``, ``subtype=``: the kernel always sees the URL and ``davfed``).
* ``REJECT``: always an error, even with ``-s`` (``remount``, and options that
  would put a secret on the command line, where ``ps`` shows it).
* ``FLAG``: a bare word that sets :class:`Config` fields to constants (VFS
  flags, ``allow_other``, ...).
* ``VALUE``: ``key=value``; the value is parsed and validated into one field.

``_`` and ``-`` are the same in option names (``cache-size`` is ``cache_size``);
values may be quoted with ``"`` or ``'`` to contain commas.
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from davfed_fuse.config import Config
from davfed_fuse.errors import UsageError
from davfed_fuse.redaction import SECRET_QUERY_PARAMS

#: systemd's default DefaultTimeoutStartSec: a mount must be live before this.
SYSTEMD_MOUNT_TIMEOUT = 90.0

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class Kind(enum.Enum):
    DROP = "drop"
    IGNORE = "ignore"
    REJECT = "reject"
    FLAG = "flag"
    VALUE = "value"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one option does. ``help`` is what ``docs/options.md`` says about it."""

    kind: Kind
    help: str
    sets: Mapping[str, object] = field(default_factory=dict)  # FLAG: field -> value
    field: str | None = None  # VALUE: the Config field
    parse: Callable[[str], object] | None = None  # VALUE: text -> field value


@dataclass(frozen=True, slots=True)
class Triage:
    """The result of :func:`build_config`.

    ``forwarded`` holds the options the daemon needs, normalised (dropped and,
    with sloppy mode, unknown options removed), ready for :func:`join_options`.
    """

    config: Config
    warnings: tuple[str, ...]
    forwarded: tuple[str, ...]


# --- value parsers: text -> value, ValueError with a short reason ---------------


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``64KiB``, ``4096`` -> bytes. Units are powers of 1024."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError("expected a size such as 4096, 512M, 20G")
    number, unit, _suffix = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def _size_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {format_size(low)} and {format_size(high)}")
        return value

    return parse


def _block_size(text: str) -> int:
    value = _size_between(4 << 10, 64 << 20)(text)
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


def _seconds(minimum: float, *, inclusive: bool = True) -> Callable[[str], float]:
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


def _integer(low: int, high: int) -> Callable[[str], int]:
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
        return _integer(0, 2**32 - 2)(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"no such user {text!r}") from None


def parse_gid(text: str) -> int:
    """A numeric gid or a group name."""
    text = text.strip()
    if text.isdigit():
        return _integer(0, 2**32 - 2)(text)
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
    if level not in _LOG_LEVELS:
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


# --- the table -----------------------------------------------------------------

_DROPPED = {
    "defaults": "fstab placeholder for the default options",
    "auto": "fstab: mount with mount -a",
    "noauto": "fstab: do not mount with mount -a",
    "user": "fstab: any user may mount (mount(8) adds noexec,nosuid,nodev)",
    "users": "fstab: any user may mount and unmount",
    "nouser": "fstab: only root may mount",
    "owner": "fstab: the device owner may mount",
    "group": "fstab: the device group may mount",
    "_netdev": "systemd: needs the network (mandatory for davfed in fstab)",
    "no_netdev": "systemd: does not need the network",
    "nofail": "fstab/systemd: do not fail the boot if the mount fails",
    "nobootwait": "Upstart-era fstab: do not wait for this mount at boot",
    "nonempty": "FUSE 2: mounting over a non-empty directory is always allowed in FUSE 3",
    "rw": "davfed is always read-only; mount(8) passes rw unless -r is given, "
    "so it is accepted silently and writes fail with EROFS",
    "ro": "read-only, which davfed always is",
    "atime": "atime handling: a read-only mount never updates atime",
    "relatime": "atime handling: a read-only mount never updates atime",
    "norelatime": "atime handling: a read-only mount never updates atime",
    "strictatime": "atime handling: a read-only mount never updates atime",
    "nostrictatime": "atime handling: a read-only mount never updates atime",
    "diratime": "atime handling: a read-only mount never updates atime",
    "nodiratime": "atime handling: a read-only mount never updates atime",
    "lazytime": "atime handling: a read-only mount never updates atime",
    "nolazytime": "atime handling: a read-only mount never updates atime",
}

#: Option-name prefixes that are dropped: comments and x-* (systemd, mount(8)).
DROPPED_PREFIXES = ("comment=", "x-", "X-")

_SECRET_HINTS = {
    "password": "put credentials in a file and use token_file= or x509_proxy=",
    "passwd": "put credentials in a file and use token_file= or x509_proxy=",
    "secret": "put credentials in a file and use token_file= or x509_proxy=",
    "token": "put the token in a file and use token_file=PATH",
    "bearer_token": "put the token in a file and use token_file=PATH",
    "access_token": "put the token in a file and use token_file=PATH",
    "authorization": "put the token in a file and use token_file=PATH",
}


def _flag(help: str, **sets: object) -> Rule:
    return Rule(Kind.FLAG, help, sets=sets)


def _value(name: str, parse: Callable[[str], object], help: str) -> Rule:
    return Rule(Kind.VALUE, help, field=name, parse=parse)


_positive = _seconds(0.0, inclusive=False)
_non_negative = _seconds(0.0)

#: Every option davfed knows, by normalised name (``-`` spelled ``_``).
OPTIONS: dict[str, Rule] = {
    **{word: Rule(Kind.DROP, why) for word, why in _DROPPED.items()},
    "remount": Rule(
        Kind.REJECT, "not supported: unmount (davfed umount DIR) and mount again instead"
    ),
    **{
        word: Rule(Kind.REJECT, f"secrets are never accepted inline: {hint}")
        for word, hint in _SECRET_HINTS.items()
    },
    "fsname": Rule(Kind.IGNORE, "ignored: the kernel always sees fsname=<URL as given>"),
    "subtype": Rule(Kind.IGNORE, "ignored: the kernel always sees subtype=davfed"),
    # VFS flags, kept in Config (the daemon turns them into mount flags).
    "nosuid": _flag("ignore set-user/group-id bits (default)", nosuid=True),
    "suid": _flag("honour set-user/group-id bits", nosuid=False),
    "nodev": _flag("ignore device files (default)", nodev=True),
    "dev": _flag("honour device files", nodev=False),
    "noexec": _flag("do not allow executing files", noexec=True),
    "exec": _flag("allow executing files (default)", noexec=False),
    "noatime": _flag("do not update access times", noatime=True),
    "sync": _flag("synchronous I/O (no effect on a read-only mount)", sync=True),
    "async": _flag("asynchronous I/O (default)", sync=False),
    "dirsync": _flag("synchronous directory updates (no effect read-only)", dirsync=True),
    # FUSE options.
    "allow_other": _flag(
        "let every user access the mount (non-root: user_allow_other in /etc/fuse.conf)",
        allow_other=True,
    ),
    "allow_root": _flag("let root access the mount as well as the owner", allow_root=True),
    "default_permissions": _flag(
        "let the kernel check permissions from the modes", default_permissions=True
    ),
    "debug": _flag("log at debug level", debug=True, log_level="DEBUG"),
    # davfed's own options.
    "cache_dir": _value("cache_dir", parse_abs_path, "directory of the block cache"),
    "cache_size": _value(
        "cache_size", _size_between(0, 1 << 60), "how much the block cache may keep on disk"
    ),
    "block_size": _value("block_size", _block_size, "size of one cached block (4K..64M)"),
    "readahead": _value(
        "readahead", _size_between(0, 16 << 30), "how far ahead of a sequential reader to fetch"
    ),
    "max_connections": _value(
        "max_connections", _integer(1, 256), "concurrent HTTP connections per host"
    ),
    "uid": _value("uid", parse_uid, "owner of every file (number or user name)"),
    "gid": _value("gid", parse_gid, "group of every file (number or group name)"),
    "umask": _value("umask", parse_umask, "mode bits removed from 0444 files / 0555 dirs"),
    "timeout": _value("timeout", _positive, "deadline of one HTTP request, seconds"),
    "connect_timeout": _value("connect_timeout", _positive, "TCP+TLS connect deadline"),
    "retries": _value("retries", _integer(0, 20), "retries of a failed HTTP request"),
    "mount_timeout": _value(
        "mount_timeout", _positive, "how long the helper waits for the mount to be live"
    ),
    "attr_timeout": _value("attr_timeout", _non_negative, "kernel/attribute cache TTL"),
    "entry_timeout": _value("entry_timeout", _non_negative, "kernel name lookup cache TTL"),
    "negative_timeout": _value(
        "negative_timeout", _non_negative, "how long a missing name is remembered"
    ),
    "dir_timeout": _value("dir_timeout", _non_negative, "directory listing cache TTL"),
    "log_level": _value("log_level", parse_log_level, "debug, info, warning, error"),
    "log_format": _value("log_format", parse_log_format, "text or json (ECS-style lines)"),
    "log_file": _value("log_file", parse_abs_path, "log to this file instead"),
    "x509_proxy": _value("x509_proxy", parse_abs_path, "X.509 proxy certificate file"),
    "x509_cert": _value("x509_cert", parse_abs_path, "X.509 client certificate file"),
    "x509_key": _value("x509_key", parse_abs_path, "X.509 client key file"),
    "token_file": _value("token_file", parse_abs_path, "file holding a bearer token"),
    "capath": _value("capath", parse_abs_path, "directory of trusted CA certificates"),
    "proxy": _value("proxy", parse_proxy, "HTTP proxies, CVMFS syntax (a|b;c;DIRECT)"),
    "config": _value("config_file", parse_abs_path, "configuration file (not read yet)"),
}


# --- splitting ---------------------------------------------------------------


def split_options(text: str) -> list[str]:
    """Split one ``-o`` string at commas outside quotes; the quotes are removed.

    ``a,b="x,y",c`` -> ``["a", "b=x,y", "c"]``. Empty items are skipped.
    """
    items: list[str] = []
    current: list[str] = []
    quote: str | None = None
    touched = False
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "\"'":
            quote = char
            touched = True
        elif char == ",":
            if current or touched:
                items.append("".join(current).strip())
            current, touched = [], False
        else:
            current.append(char)
    if quote is not None:
        raise UsageError(f"unterminated {quote} quote in mount options {text!r}")
    if current or touched:
        items.append("".join(current).strip())
    return [item for item in items if item]


def join_options(items: Iterable[str]) -> str:
    """The inverse of :func:`split_options`: quote values holding commas or quotes."""
    out = []
    for item in items:
        if any(c in item for c in ",\"'"):
            key, sep, value = item.partition("=")
            quote = '"' if '"' not in value else "'"
            item = f"{key}{sep}{quote}{value}{quote}" if sep else f"{quote}{item}{quote}"
        out.append(item)
    return ",".join(out)


def normalise_name(key: str) -> str:
    """Option names treat ``-`` and ``_`` alike; the table spells them with ``_``."""
    return key.replace("-", "_")


# --- the URL -------------------------------------------------------------------


def validate_url(url: str) -> str:
    """Check a federation URL and return it unchanged (it becomes the fsname)."""
    if not url or any(c.isspace() for c in url):
        raise UsageError(f"bad URL {url!r}: empty or containing spaces (percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"bad URL {url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise UsageError(f"bad URL {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            "bad URL: credentials in the URL are never accepted "
            "(they would show in ps and /proc/mounts); use token_file= or x509_proxy="
        )
    secret = {k.lower() for k, _ in parse_qsl(parts.query)} & SECRET_QUERY_PARAMS
    if secret:
        raise UsageError(
            f"bad URL: it carries a signature or token ({', '.join(sorted(secret))}); "
            "give the plain federation URL and a token_file="
        )
    if parts.fragment:
        raise UsageError(f"bad URL {url!r}: a federation URL has no #fragment")
    return url


# --- triage --------------------------------------------------------------------


def build_config(
    url: str,
    mountpoint: str | os.PathLike[str],
    options: Iterable[str] = (),
    *,
    sloppy: bool = False,
    verbose: int = 0,
    foreground: bool = False,
    debug: bool = False,
) -> Triage:
    """Triage ``options`` (raw ``-o`` strings, in order) into a validated Config.

    Later options win over earlier ones. ``sloppy`` (``-s``) turns unknown
    options into warnings; bad values and rejected options still fail.
    ``verbose`` (the number of ``-v``) makes the log level that many steps
    more verbose. The URL is kept exactly as given, and the mountpoint is
    made absolute without following symlinks or touching the filesystem.

    Raises:
        UsageError: naming the offending option or the bad URL.
    """
    validate_url(url)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    forwarded: list[str] = []
    env: dict[str, str] = {}
    for text in options:
        for item in split_options(text):
            key, sep, value = item.partition("=")
            if item.startswith(DROPPED_PREFIXES):
                continue
            if key.startswith("env."):
                name = key[4:]
                _check_env(name, value, has_value=bool(sep))
                env[name] = value
                forwarded.append(item)
                continue
            name = normalise_name(key)
            rule = OPTIONS.get(name)
            if rule is None:
                if not sloppy:
                    raise UsageError(f"unknown mount option '{key}'")
                warnings.append(f"ignoring unknown mount option '{key}' (sloppy mode)")
                continue
            _apply(rule, name, key, value if sep else None, values, warnings, url)
            if rule.kind in (Kind.FLAG, Kind.VALUE):
                forwarded.append(f"{name}={value}" if sep else name)
    if env:
        values["env"] = tuple(env.items())
    if debug:
        values.update(debug=True, log_level="DEBUG")
    if verbose:
        level = values.get("log_level", Config.__dataclass_fields__["log_level"].default)
        index = min(_LOG_LEVELS.index(level) + verbose, len(_LOG_LEVELS) - 1)
        values["log_level"] = _LOG_LEVELS[index]
        forwarded.append(f"log_level={values['log_level'].lower()}")
    config = Config(
        url=url,
        mountpoint=Path(os.path.abspath(mountpoint)),
        foreground=foreground or debug,
        **values,
    )
    _check_config(config, warnings)
    return Triage(config, tuple(warnings), tuple(forwarded))


def _apply(
    rule: Rule,
    name: str,
    key: str,
    value: str | None,
    values: dict[str, Any],
    warnings: list[str],
    url: str,
) -> None:
    if rule.kind is Kind.DROP:
        return
    if rule.kind is Kind.REJECT:
        raise UsageError(f"mount option '{key}' is not accepted: {rule.help}")
    if rule.kind is Kind.IGNORE:
        if (name, value) not in (("fsname", url), ("subtype", "davfed")):
            warnings.append(f"mount option '{key}' {rule.help}")
        return
    if rule.kind is Kind.FLAG:
        if value is not None:
            raise UsageError(f"mount option '{key}' takes no value")
        values.update(rule.sets)
        return
    assert rule.field is not None and rule.parse is not None
    if not value:
        raise UsageError(f"mount option '{key}' needs a value: {key}=VALUE")
    try:
        values[rule.field] = rule.parse(value)
    except ValueError as exc:
        raise UsageError(f"bad value for mount option '{key}': {value!r} {exc}") from None


def _check_env(name: str, value: str, *, has_value: bool) -> None:
    if not _ENV_NAME.match(name) or not has_value:
        raise UsageError(f"mount option 'env.{name}' must look like env.NAME=VALUE")
    upper = name.upper()
    if any(word in upper for word in ("TOKEN", "PASSWORD", "PASSWD", "SECRET")) and not (
        upper.endswith(("_FILE", "_DIR", "_PATH"))
    ):
        raise UsageError(
            f"mount option 'env.{name}' would expose a secret in ps and /proc/mounts; "
            "point to a file instead (e.g. env.BEARER_TOKEN_FILE=/path or token_file=)"
        )


def _check_config(config: Config, warnings: list[str]) -> None:
    if config.allow_other and config.allow_root:
        raise UsageError("mount options 'allow_other' and 'allow_root' exclude each other")
    if 0 < config.cache_size < config.block_size:
        raise UsageError(
            f"cache_size={format_size(config.cache_size)} is smaller than "
            f"block_size={format_size(config.block_size)}"
        )
    if config.mount_timeout >= SYSTEMD_MOUNT_TIMEOUT:
        warnings.append(
            f"mount_timeout={config.mount_timeout:g} is not below systemd's default "
            f"{SYSTEMD_MOUNT_TIMEOUT:g} s mount timeout; also set x-systemd.mount-timeout="
        )
    if config.config_file is not None:
        warnings.append(
            f"config={config.config_file} is accepted but configuration files are not "
            "read yet; give the options with -o"
        )


__all__ = [
    "DROPPED_PREFIXES",
    "OPTIONS",
    "Kind",
    "Rule",
    "Triage",
    "build_config",
    "format_size",
    "join_options",
    "normalise_name",
    "parse_size",
    "split_options",
    "validate_url",
]
