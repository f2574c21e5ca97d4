"""Configuration files: ``/etc/davfed/davfed.conf``, ``conf.d/*.conf``, sections per mount.

Owns: the file format, where the files are (``DAVFED_CONFIG_DIR`` overrides
``/etc/davfed``), reading and checking them, and putting their settings in the order
they apply (:func:`layered`). Applying settings to a :class:`~davfed_fuse.config.Config`
is ``options``'s, which puts ``-o`` after what this module returns.
Must not import: pyfuse3, trio, httpx, or any davfed module but ``errors``,
``optiontable`` and ``optionvalues`` (the mount helper reads the files).

The format (``docs/config.md``) is INI-like, as davfs2's ``davfs2.conf``::

    # /etc/davfed/conf.d/50-site.conf
    cache_size = 50G
    proxy = http://squid1:3128|http://squid2:3128;DIRECT
    allow_other

    [https://dynafed.example/belle]    # settings for mounts of this URL
    token_file = /etc/davfed/belle.token

    [/dynafed/atlas]                   # settings for the mount on this directory
    cache_dir = /scratch/davfed

Every key is a mount option of ``optiontable.OPTIONS`` (``-`` and ``_`` alike); a flag is
a bare word or ``flag = yes|no``. Order: the keys outside sections of every file
(``davfed.conf`` or ``config=FILE``, then ``conf.d/*.conf`` by name), then the
``[URL]`` sections of every file, then the ``[/mountpoint]`` sections, then ``-o``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from davfed_fuse.errors import UsageError
from davfed_fuse.optiontable import DROPPED_PREFIXES, OPTIONS, Kind

#: Overrides :data:`SYSTEM_CONFIG_DIR` (tests, and sites that keep it elsewhere).
CONFIG_DIR_ENV = "DAVFED_CONFIG_DIR"
SYSTEM_CONFIG_DIR = Path("/etc/davfed")
MAIN_FILE = "davfed.conf"
DROPIN_DIR = "conf.d"

#: The values that turn a flag on or off in a file (``allow_other = yes``).
TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "off", "0"})

#: Keys that mean nothing in a file, with what to do instead.
_NOT_IN_FILES = {"config": "config= is not read from a configuration file; give it with -o"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``key = value`` (``value`` None for a bare word) and where it came from.

    ``origin`` is ``FILE:LINE`` for a file, ``-o`` for the command line.
    """

    key: str
    value: str | None
    origin: str

    @property
    def from_file(self) -> bool:
        return self.origin != "-o"


@dataclass(frozen=True, slots=True)
class Section:
    """``[NAME]``: a mountpoint (``/dynafed/belle``) or a federation URL."""

    name: str
    origin: str
    settings: tuple[Setting, ...]

    @property
    def is_url(self) -> bool:
        return "://" in self.name


@dataclass(frozen=True, slots=True)
class ConfigFile:
    path: Path
    settings: tuple[Setting, ...]  # outside any section
    sections: tuple[Section, ...]


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$DAVFED_CONFIG_DIR`` if set, else ``/etc/davfed``."""
    value = (os.environ if environ is None else environ).get(CONFIG_DIR_ENV)
    return Path(value) if value else SYSTEM_CONFIG_DIR


def config_paths(directory: Path, main: Path | None = None) -> list[Path]:
    """The files to read, in order: ``main`` (or ``davfed.conf`` if it exists), then
    ``conf.d/*.conf`` sorted by name.

    Raises:
        UsageError: ``main`` was given (``config=FILE``) and does not exist.
    """
    paths = []
    if main is not None:
        if not main.is_file():
            why = "is not a file" if main.exists() else "does not exist"
            raise UsageError(f"config file {main} {why}")
        paths.append(main)
    elif (directory / MAIN_FILE).is_file():
        paths.append(directory / MAIN_FILE)
    dropins = directory / DROPIN_DIR
    if dropins.is_dir():
        paths += sorted(p for p in dropins.glob("*.conf") if p.is_file())
    return paths


def read_file(path: Path) -> ConfigFile:
    """Read and check one file: every key known, every value valid, sections well named.

    Raises:
        UsageError: ``FILE:LINE: what is wrong`` (or ``FILE: why it cannot be read``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_text(text, str(path))


def parse_text(text: str, name: str) -> ConfigFile:
    """Parse the text of a file called ``name`` (see :func:`read_file`)."""
    top: list[Setting] = []
    sections: list[Section] = []
    current: list[Setting] = top
    header: tuple[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        origin = f"{name}:{number}"
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if header is not None:
                sections.append(Section(header[0], header[1], tuple(current)))
            header = (_section_name(line, origin), origin)
            current = []
            continue
        current.append(check_setting(_setting(line, origin)))
    if header is not None:
        sections.append(Section(header[0], header[1], tuple(current)))
    return ConfigFile(Path(name), tuple(top), tuple(sections))


def _section_name(line: str, origin: str) -> str:
    if not line.endswith("]"):
        raise UsageError(f"{origin}: a section header is [/mountpoint] or [URL]: {line!r}")
    name = line[1:-1].strip()
    if name.startswith("/"):
        return os.path.normpath(name)
    if name.startswith(("http://", "https://")) and len(name) > len("https://"):
        return name.rstrip("/")
    raise UsageError(
        f"{origin}: section [{name}] must name a mountpoint (an absolute path) "
        "or a federation URL (http:// or https://)"
    )


def _setting(line: str, origin: str) -> Setting:
    key, sep, value = line.partition("=")
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise UsageError(f"{origin}: expected KEY = VALUE or a flag, got {line!r}")
    if not sep:
        return Setting(key, None, origin)
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    if not value:
        raise UsageError(f"{origin}: '{key}' needs a value: {key} = VALUE")
    return Setting(key, value, origin)


def check_setting(setting: Setting) -> Setting:
    """Check that a file's ``setting`` is an option with a valid value; return it.

    Raises:
        UsageError: ``FILE:LINE: ...`` naming the key, the value and why.
    """
    key, value, origin = setting.key, setting.value, setting.origin
    if key.startswith("env."):
        if value is None:
            raise UsageError(f"{origin}: '{key}' needs a value: {key} = VALUE")
        return setting
    name = key.replace("-", "_")
    rule = OPTIONS.get(name)
    if rule is None:
        if setting.key.startswith(DROPPED_PREFIXES):
            raise UsageError(f"{origin}: '{key}' is an fstab/systemd word; it belongs in fstab")
        raise UsageError(f"{origin}: unknown option '{key}' (see docs/options.md)")
    if name in _NOT_IN_FILES:
        raise UsageError(f"{origin}: {_NOT_IN_FILES[name]}")
    if rule.kind in (Kind.DROP, Kind.IGNORE):
        raise UsageError(f"{origin}: '{key}' has no effect in a configuration file ({rule.help})")
    if rule.kind is Kind.REJECT:
        raise UsageError(f"{origin}: '{key}' is not accepted: {rule.help}")
    if rule.kind is Kind.FLAG:
        if value is not None:
            flag_value(rule.sets, key, value, origin)
        return setting
    assert rule.parse is not None
    if value is None:
        raise UsageError(f"{origin}: '{key}' needs a value: {key} = VALUE")
    try:
        rule.parse(value)
    except ValueError as exc:
        raise UsageError(f"{origin}: bad value for '{key}': {value!r} {exc}") from None
    return setting


def flag_value(sets: Mapping[str, object], key: str, value: str, origin: str) -> dict[str, object]:
    """What ``flag = yes|no`` in a file sets: the flag's fields, or their negation."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return dict(sets)
    if word in FALSE_WORDS and all(isinstance(v, bool) for v in sets.values()):
        return {name: not v for name, v in sets.items()}
    allowed = "yes or no" if all(isinstance(v, bool) for v in sets.values()) else "yes"
    raise UsageError(f"{origin}: flag '{key}' takes no value but {allowed}, not {value!r}")


def layered(files: Iterable[ConfigFile], url: str | None, mountpoint: Path | None) -> list[Setting]:
    """The settings of ``files`` that apply to a mount of ``url`` on ``mountpoint``, in
    the order they apply: keys outside sections, then ``[URL]``, then ``[/mountpoint]``."""
    files = list(files)
    out = [s for f in files for s in f.settings]
    wanted_url = url.rstrip("/") if url else None
    wanted_dir = os.path.normpath(mountpoint) if mountpoint is not None else None
    for want_url in (True, False):
        for f in files:
            for section in f.sections:
                target = wanted_url if want_url else wanted_dir
                if section.is_url == want_url and section.name == target:
                    out += section.settings
    return out


def read_layers(
    url: str | None,
    mountpoint: Path | None,
    main: Path | None = None,
    directory: Path | None = None,
) -> tuple[list[Path], list[Setting]]:
    """The files read and their settings for one mount (see :func:`layered`)."""
    paths = config_paths(directory or config_dir(), main)
    return paths, layered((read_file(p) for p in paths), url, mountpoint)


__all__: Sequence[str] = [
    "CONFIG_DIR_ENV",
    "ConfigFile",
    "Section",
    "Setting",
    "check_setting",
    "config_dir",
    "config_paths",
    "flag_value",
    "layered",
    "parse_text",
    "read_file",
    "read_layers",
]
