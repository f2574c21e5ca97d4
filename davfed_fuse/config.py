"""The validated configuration of one mount, as one frozen value.

Owns: :class:`Config` and its defaults. ``options.py`` builds it from the
command line and ``-o`` strings; everything below reads it and never changes it.
Must not import: anything of davfed's but ``errors``.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

#: The cache directory of a development checkout: ``<repo>/cache``.
DEV_CACHE_DIR = Path(__file__).resolve().parent.parent / "cache"
#: Where a system mount keeps its cache (one subdirectory per federation URL).
SYSTEM_CACHE_DIR = Path("/var/cache/davfed")


def home_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The user's home: ``$HOME`` if absolute, else the password database's (None if
    the user has no entry)."""
    home = (os.environ if environ is None else environ).get("HOME", "")
    if os.path.isabs(home):
        return Path(home)
    try:
        return Path(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        return None


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """A non-root user's cache: ``$XDG_CACHE_HOME/davfed``, else ``~/.cache/davfed``."""
    xdg = (os.environ if environ is None else environ).get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "davfed"
    home = home_dir(environ)
    return home / ".cache" / "davfed" if home is not None else SYSTEM_CACHE_DIR


def default_cache_dir() -> Path:
    """The per-user cache when not root (:func:`user_cache_dir`); for root, ``cache/`` in a
    development checkout (it has ``pyproject.toml``), else the system dir."""
    if os.geteuid() != 0:
        return user_cache_dir()
    if (DEV_CACHE_DIR.parent / "pyproject.toml").is_file():
        return DEV_CACHE_DIR
    return SYSTEM_CACHE_DIR


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one mount needs to know; built once, then read-only."""

    url: str
    mountpoint: Path
    # How the daemon runs.
    foreground: bool = False
    debug: bool = False
    # Options for the kernel / libfuse.
    allow_other: bool = False
    allow_root: bool = False
    default_permissions: bool = False
    nosuid: bool = True
    nodev: bool = True
    noexec: bool = False
    noatime: bool = False
    sync: bool = False
    dirsync: bool = False
    # Ownership and modes of every entry (low-level FUSE has no uid=/gid=).
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    # Cache.
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = 20 * GiB
    #: Free space the cache leaves on its filesystem: ``(bytes, percent)``, the larger.
    cache_min_free: tuple[int, float] = (0, 5.0)
    block_size: int = 4 * MiB
    readahead: int = 64 * MiB
    max_connections: int = 8
    # Replica choice (docs/replicas.md).
    replica_choice: str = "federation"
    multi_replica: bool = False
    # Metadata caching (seconds).
    attr_timeout: float = 60.0
    entry_timeout: float = 60.0
    negative_timeout: float = 10.0
    dir_timeout: float = 60.0
    # Network deadlines (seconds).
    connect_timeout: float = 10.0
    timeout: float = 30.0
    retries: int = 3
    mount_timeout: float = 60.0
    # Logging.
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: Path | None = None
    # Credentials and proxies (empty: discover).
    x509_proxy: Path | None = None
    x509_cert: Path | None = None
    x509_key: Path | None = None
    token_file: Path | None = None
    capath: Path | None = None
    proxy: str | None = None
    # Fleet options (issue 15): proxy failback, a filling cache's first byte, boot bursts.
    proxy_reset_after: float = 300.0
    proxy_fill_rate: int = 2 << 20
    startup_jitter: float = 3.0
    # Operations: Prometheus /metrics address (None: off), the summary line's period.
    metrics_addr: str | None = None
    stats_interval: float = 600.0
    # ``config=PATH`` (read instead of davfed.conf; see configfile) and
    # ``env.NAME=VALUE`` pairs that
    # the launcher puts into the daemon's environment.
    config_file: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    # Where pyfuse3 was told what, for --dry-run and logs.
    extra_fuse_options: frozenset[str] = frozenset()

    @property
    def file_mode(self) -> int:
        """Mode bits of regular files: read-only, minus the umask."""
        return 0o444 & ~self.umask

    @property
    def dir_mode(self) -> int:
        """Mode bits of directories: read and search, minus the umask."""
        return 0o555 & ~self.umask
