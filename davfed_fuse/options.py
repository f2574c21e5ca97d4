"""Mount option triage: ``-o`` strings in, a validated :class:`Config` out.

Owns: splitting and joining ``-o`` strings (quotes, commas), checking the federation
URL, applying the option table (``optiontable.OPTIONS``) to the settings of the
configuration files (``configfile``) and then of ``-o``, in order, ``env.NAME=VALUE``,
the checks across options, and what the daemon is handed (:class:`Triage`). The table
itself, and the parsers of option values (``optionvalues``), are apart from it.
Everything here but the reading of the configuration files is a pure function.
Must not import: pyfuse3, trio, httpx, or any davfed module but ``config``,
``configfile``, ``errors``, ``redaction``, ``optiontable`` and ``optionvalues``.

``_`` and ``-`` are the same in option names (``cache-size`` is ``cache_size``);
values may be quoted with ``"`` or ``'`` to contain commas.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from davfed_fuse.config import Config
from davfed_fuse.configfile import Setting, flag_value, read_layers
from davfed_fuse.errors import UsageError
from davfed_fuse.optiontable import DROPPED_PREFIXES, OPTIONS, Kind, Rule
from davfed_fuse.optionvalues import LOG_LEVELS, format_size
from davfed_fuse.redaction import SECRET_QUERY_PARAMS

#: systemd's default DefaultTimeoutStartSec: a mount must be live before this.
SYSTEMD_MOUNT_TIMEOUT = 90.0

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Triage:
    """The result of :func:`build_config`.

    ``forwarded`` holds the options the daemon needs, normalised (dropped and,
    with sloppy mode, unknown options removed), ready for :func:`join_options`.
    """

    config: Config
    warnings: tuple[str, ...]
    forwarded: tuple[str, ...]
    #: Where each Config field that is not a default came from: ``FILE:LINE``,
    #: ``-o``, ``-v`` or ``-d`` (``env.NAME`` for environment variables).
    origins: Mapping[str, str] = field(default_factory=dict)
    #: The configuration files read, in order.
    files: tuple[Path, ...] = ()


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
    config_dir: Path | None = None,
    mountpoint_known: bool = True,
) -> Triage:
    """Triage the configuration files and ``options`` (raw ``-o`` strings) into a Config.

    The files come first (``configfile.layered``: ``davfed.conf`` or ``config=FILE``,
    ``conf.d/*.conf``, then the sections for ``url`` and ``mountpoint``), then the
    options in order; later settings win over earlier ones. ``config_dir`` replaces
    ``$DAVFED_CONFIG_DIR`` / ``/etc/davfed``. ``sloppy`` (``-s``) turns unknown ``-o``
    options into warnings; bad values, rejected options and anything wrong in a file
    still fail. ``verbose`` (the number of ``-v``) makes the log level that many steps
    more verbose. ``mountpoint_known=False`` (``davfed config show URL``) applies no
    ``[/mountpoint]`` section. The URL is kept exactly as given, and the mountpoint is made absolute
    without following symlinks or touching the filesystem.

    Raises:
        UsageError: naming the offending option (and its file and line) or the bad URL.
    """
    validate_url(url)
    mount_dir = Path(os.path.abspath(mountpoint))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    warnings: list[str] = []
    forwarded: list[str] = []
    env: dict[str, str] = {}
    command_line = [
        Setting(key, value if sep else None, "-o")
        for text in options
        for item in split_options(text)
        if not item.startswith(DROPPED_PREFIXES)
        for key, sep, value in [item.partition("=")]
    ]
    main = _config_option(command_line)
    paths, from_files = read_layers(url, mount_dir if mountpoint_known else None, main, config_dir)
    for setting in [*from_files, *command_line]:
        key, value, origin = setting.key, setting.value, setting.origin
        if key.startswith("env."):
            name = key[4:]
            _check_env(name, value or "", has_value=value is not None, origin=origin)
            env[name] = value or ""
            origins[f"env.{name}"] = origin
            if not setting.from_file:
                forwarded.append(f"{key}={value}")
            continue
        name = normalise_name(key)
        rule = OPTIONS.get(name)
        if rule is None:
            if not sloppy:
                raise UsageError(f"unknown mount option '{key}'")
            warnings.append(f"ignoring unknown mount option '{key}' (sloppy mode)")
            continue
        for changed in _apply(rule, name, setting, values, warnings, url):
            origins[changed] = origin
        if rule.kind in (Kind.FLAG, Kind.VALUE) and not setting.from_file:
            forwarded.append(f"{name}={value}" if value is not None else name)
    if env:
        values["env"] = tuple(env.items())
    if debug:
        values.update(debug=True, log_level="DEBUG")
        origins.update(debug="-d", log_level="-d")
    if verbose:
        level = values.get("log_level", Config.__dataclass_fields__["log_level"].default)
        index = min(LOG_LEVELS.index(level) + verbose, len(LOG_LEVELS) - 1)
        values["log_level"] = LOG_LEVELS[index]
        origins["log_level"] = "-v"
        forwarded.append(f"log_level={values['log_level'].lower()}")
    config = Config(url=url, mountpoint=mount_dir, foreground=foreground or debug, **values)
    _check_config(config, warnings)
    return Triage(config, tuple(warnings), tuple(forwarded), origins, tuple(paths))


def _config_option(settings: Iterable[Setting]) -> Path | None:
    """The file of the last ``config=FILE`` among the ``-o`` settings, checked."""
    values: dict[str, Any] = {}
    for setting in settings:
        if normalise_name(setting.key) == "config":
            _apply(OPTIONS["config"], "config", setting, values, [], "")
    main: Path | None = values.get("config_file")
    return main


def _apply(
    rule: Rule,
    name: str,
    setting: Setting,
    values: dict[str, Any],
    warnings: list[str],
    url: str,
) -> list[str]:
    """Apply one setting to ``values``; return the Config fields it set."""
    key, value = setting.key, setting.value
    if rule.kind is Kind.DROP:
        return []
    if rule.kind is Kind.REJECT:
        raise UsageError(f"mount option '{key}' is not accepted: {rule.help}")
    if rule.kind is Kind.IGNORE:
        if (name, value) not in (("fsname", url), ("subtype", "davfed")):
            warnings.append(f"mount option '{key}' {rule.help}")
        return []
    if rule.kind is Kind.FLAG:
        if value is None:
            sets = dict(rule.sets)
        elif setting.from_file:
            sets = flag_value(rule.sets, key, value, setting.origin)
        else:
            raise UsageError(f"mount option '{key}' takes no value")
        values.update(sets)
        return list(sets)
    assert rule.field is not None and rule.parse is not None
    if not value:
        raise UsageError(f"mount option '{key}' needs a value: {key}=VALUE")
    try:
        values[rule.field] = rule.parse(value)
    except ValueError as exc:
        where = f"{setting.origin}: " if setting.from_file else ""
        raise UsageError(f"{where}bad value for mount option '{key}': {value!r} {exc}") from None
    return [rule.field]


def _check_env(name: str, value: str, *, has_value: bool, origin: str = "-o") -> None:
    where = f"{origin}: " if origin != "-o" else ""
    if not _ENV_NAME.match(name) or not has_value:
        raise UsageError(f"{where}mount option 'env.{name}' must look like env.NAME=VALUE")
    upper = name.upper()
    if any(word in upper for word in ("TOKEN", "PASSWORD", "PASSWD", "SECRET")) and not (
        upper.endswith(("_FILE", "_DIR", "_PATH"))
    ):
        raise UsageError(
            f"{where}mount option 'env.{name}' would expose a secret in ps and /proc/mounts; "
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


__all__ = [
    "Triage",
    "build_config",
    "join_options",
    "normalise_name",
    "split_options",
    "validate_url",
]
