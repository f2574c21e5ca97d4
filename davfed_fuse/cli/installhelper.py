"""``davfed install-helper [--prefix /sbin] [--uninstall]``: the mount(8) helper for fstab.

Owns: the launcher script (``mount.davfed``: runs this installation's Python in isolated
mode on ``cli.main.helper_main``) and the ``PREFIX/mount.davfed`` and
``PREFIX/mount.fuse.davfed`` symlinks to it, which ``mount -t davfed`` and fstab lines of
type davfed need.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import MountError
from davfed_fuse.exitcodes import Exit

HELPER_NAMES = ("mount.davfed", "mount.fuse.davfed")
#: What the launcher runs. Scripts already installed call ``cli.main.helper_main``, so
#: that name stays there.
LAUNCHER_CODE = (
    "import sys; from davfed_fuse.cli.main import helper_main; sys.exit(helper_main(sys.argv[1:]))"
)


def launcher_script_path() -> Path:
    """Where ``install-helper`` writes the script the symlinks point to."""
    if sys.prefix != sys.base_prefix:  # a virtualenv: keep it next to its python
        return Path(sys.prefix) / "bin" / "mount.davfed"
    return Path("/usr/local/lib/davfed/mount.davfed")


def launcher_script() -> str:
    """A shell script running this Python's davfed as the mount helper.

    ``-I`` keeps the caller's cwd and PYTHON* variables out of a root process;
    ``"$0"`` keeps the symlink's name, which selects helper mode.
    """
    return (
        "#!/bin/sh\n"
        "# The mount(8) helper of davfed, written by `davfed install-helper`.\n"
        f'exec {shlex.quote(sys.executable)} -I -c {shlex.quote(LAUNCHER_CODE)} "$0" "$@"\n'
    )


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed install-helper",
        description="Link PREFIX/mount.davfed and PREFIX/mount.fuse.davfed to a launcher "
        "running this installation, so that `mount -t davfed` and fstab lines of type "
        "davfed work. mount(8) looks only in /sbin (/usr/sbin on usr-merged systems).",
    )
    parser.add_argument("--prefix", default="/sbin", type=Path, help="default: /sbin")
    parser.add_argument("--uninstall", action="store_true", help="remove the links")
    parser.add_argument(
        "--script",
        type=Path,
        default=launcher_script_path(),
        help="where to write the launcher script the links point to (default: %(default)s)",
    )
    args = parser.parse_args(list(argv))
    prefix: Path = args.prefix.resolve()
    script: Path = args.script.absolute()
    try:
        if args.uninstall:
            return uninstall(prefix, script)
        install(prefix, script)
    except OSError as exc:
        raise MountError(f"install-helper: {exc}") from None
    return Exit.OK


def install(prefix: Path, script: Path) -> None:
    """Write ``script`` (if it changed) and point the helper names in ``prefix`` at it.

    Raises:
        MountError: a helper name exists and is not a symlink.
        OSError: writing or linking failed.
    """
    text = launcher_script()
    if not script.is_file() or script.read_text() != text:
        script.parent.mkdir(parents=True, exist_ok=True)
        tmp = script.with_name(script.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(script)
        print(f"wrote {script}")
    for name in HELPER_NAMES:
        link = prefix / name
        if link.is_symlink() and os.readlink(link) == str(script):
            print(f"{link} -> {script} (already installed)")
            continue
        if link.exists() and not link.is_symlink():
            raise MountError(f"{link} exists and is not a symlink; remove it first")
        if link.is_symlink():
            print(f"replacing {link} -> {os.readlink(link)}")
            link.unlink()
        link.symlink_to(script)
        print(f"{link} -> {script}")


def uninstall(prefix: Path, script: Path) -> int:
    """Remove the helper links that point at ``script``, and ``script``."""
    for name in HELPER_NAMES:
        link = prefix / name
        if link.is_symlink() and os.readlink(link) == str(script):
            link.unlink()
            print(f"removed {link}")
        elif link.exists() or link.is_symlink():
            print(f"davfed: leaving {link}: not installed from here", file=sys.stderr)
    if script.is_file():
        script.unlink()
        print(f"removed {script}")
    return Exit.OK
