"""The mount option table: what happens to every option davfed can receive.

Owns: :data:`OPTIONS`, the one table of every mount option davfed knows, from mount(8),
``/etc/fstab``, cloud-init, systemd or a user: its name, its kind, the :class:`Config`
field it sets and how its value is parsed, and the sentence ``docs/options.md`` gives
it (a test checks the page against the table). The defaults are :class:`Config`'s.
Applying the table to ``-o`` strings is ``options``'s.
Must not import: anything of davfed's but ``optionvalues``.

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

Names are spelled with ``_`` here; ``-`` is the same in a mount option.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from davfed_fuse.optionvalues import (
    integer,
    parse_abs_path,
    parse_block_size,
    parse_gid,
    parse_log_format,
    parse_log_level,
    parse_min_free,
    parse_proxy,
    parse_uid,
    parse_umask,
    seconds,
    size_between,
)


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


def _one_of(*words: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in words:
            raise ValueError(f"expected {' or '.join(words)}")
        return value

    return parse


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "yes", "1", "true"):
        return True
    if value in ("off", "no", "0", "false"):
        return False
    raise ValueError("expected on or off")


#: Why ``multi_replica=on`` is refused for now (docs/replicas.md, issue 16).
MULTI_REPLICA_DISABLED = (
    "not available in this release: when a file spread over several replicas fails "
    "its whole-file checksum, blocks that fetches still in flight store afterwards can "
    "keep bytes of the bad replica (found by tests/replicas); use replica_choice=measured"
)


def _multi_replica(text: str) -> bool:
    if _on_off(text):
        raise ValueError(MULTI_REPLICA_DISABLED)
    return False


def _parse_listen(text: str) -> str:
    """``127.0.0.1:9109`` or ``[::1]:9109``: an IP address (or localhost) and a port."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:9109")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (or localhost)") from None
    return text.strip()


_positive = seconds(0.0, inclusive=False)
_non_negative = seconds(0.0)

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
        "cache_size", size_between(0, 1 << 60), "how much the block cache may keep on disk"
    ),
    "cache_min_free": _value(
        "cache_min_free",
        parse_min_free,
        "free space the cache always leaves on its filesystem (5% or a size)",
    ),
    "block_size": _value("block_size", parse_block_size, "size of one cached block (4K..64M)"),
    "readahead": _value(
        "readahead", size_between(0, 16 << 30), "how far ahead of a sequential reader to fetch"
    ),
    "max_connections": _value(
        "max_connections", integer(1, 256), "concurrent HTTP connections per host"
    ),
    # Replica choice (docs/replicas.md).
    "replica_choice": _value(
        "replica_choice",
        _one_of("federation", "measured"),
        "read a large file from the federation's replica or the best measured one",
    ),
    "multi_replica": _value(
        "multi_replica",
        _multi_replica,
        "spread read-ahead over several replicas (off; on is refused in this release)",
    ),
    "uid": _value("uid", parse_uid, "owner of every file (number or user name)"),
    "gid": _value("gid", parse_gid, "group of every file (number or group name)"),
    "umask": _value("umask", parse_umask, "mode bits removed from 0444 files / 0555 dirs"),
    "timeout": _value("timeout", _positive, "deadline of one HTTP request, seconds"),
    "connect_timeout": _value("connect_timeout", _positive, "TCP+TLS connect deadline"),
    "retries": _value("retries", integer(0, 20), "retries of a failed HTTP request"),
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
    # Fleet: proxies at run time and start-up bursts (issue 15; docs/fleet.md).
    "proxy_reset_after": _value(
        "proxy_reset_after", _positive, "seconds until the first proxy group is tried again"
    ),
    "proxy_fill_rate": _value(
        "proxy_fill_rate",
        size_between(1, 1 << 40),
        "bytes/s a caching proxy is assumed to fill at least (first-byte wait)",
    ),
    "startup_jitter": _value(
        "startup_jitter", _non_negative, "random delay (0..N s) before the first request"
    ),
    "config": _value(
        "config_file", parse_abs_path, "configuration file read instead of davfed.conf"
    ),
    # Operations (docs/operations.md).
    "metrics_addr": _value(
        "metrics_addr",
        _parse_listen,
        "serve Prometheus metrics on HOST:PORT (off by default; 127.0.0.1:PORT typical)",
    ),
    "stats_interval": _value(
        "stats_interval", _non_negative, "seconds between summary lines in the log (0: none)"
    ),
}
