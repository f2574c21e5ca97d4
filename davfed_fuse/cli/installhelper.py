"""``davfed install-helper [--prefix /sbin] [--uninstall]``: what pip cannot install.

Owns the files outside the Python installation that make davfed a system tool, each
marked as written by ``install-helper`` so that ``--uninstall`` removes exactly them:

* ``PREFIX/mount.davfed``: the mount(8) helper, a shell script that runs this
  installation's Python in isolated mode on ``cli.main.helper_main``. It lives in
  PREFIX itself (not a link into the installation), so that after a ``pip
  uninstall`` or a removed venv it is still there to say what happened, how to
  reinstall and which files to remove (exit 32), instead of a traceback.
* ``PREFIX/mount.fuse.davfed``: a link to it, for fstab lines of type fuse.davfed.
* ``MANDIR/man8/davfed.8``: the manual page, rendered from the option table.
* ``UNITDIR/davfed@.service``: the systemd unit with this installation's paths.

Links left by older versions (``PREFIX/mount.davfed`` -> ``VENV/bin/mount.davfed``) are
replaced, and their script is removed.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from davfed_fuse.cli import help as helptext
from davfed_fuse.cli import unitfile
from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import MountError
from davfed_fuse.exitcodes import Exit

HELPER_NAME = "mount.davfed"
LINK_NAMES = ("mount.fuse.davfed",)
HELPER_NAMES = (HELPER_NAME, *LINK_NAMES)
#: The first line after the shebang of every file install-helper writes.
MARKER = "# Written by `davfed install-helper`"
#: What the helper runs. ``cli.main.helper_main`` is the stable name; an installation
#: that is gone is reported in one line with what to do.
LAUNCHER_CODE = """\
import sys
try:
    from davfed_fuse.cli.main import helper_main
except ImportError:
    sys.stderr.write(
        f"{sys.argv[1]}: davfed is no longer installed in {sys.prefix} (was it pip "
        "uninstalled?): reinstall it and run `davfed install-helper` again (see "
        "docs/install.md), or remove what it installed: rm -f " + sys.argv[2] + "\\n"
    )
    sys.exit(32)
sys.exit(helper_main(sys.argv[1:2] + sys.argv[3:]))
"""


class Layout:
    """Where this run of install-helper puts each file."""

    def __init__(self, prefix: Path, man_dir: Path, unit_dir: Path) -> None:
        self.helper = prefix / HELPER_NAME
        self.links = [prefix / name for name in LINK_NAMES]
        self.man_page = man_dir / "man8" / "davfed.8"
        self.unit = unit_dir / unitfile.UNIT_NAME

    def files(self) -> Iterator[Path]:
        yield self.helper
        yield from self.links
        yield self.man_page
        yield self.unit


def launcher_script(layout: Layout, python: str | None = None) -> str:
    """The helper: this Python (or ``python``) running davfed, or a one-line diagnosis."""
    python = python or sys.executable
    remove = " ".join(shlex.quote(str(path)) for path in layout.files())
    code = shlex.quote(LAUNCHER_CODE)
    return f"""#!/bin/sh
{MARKER} for {python}.
# The mount(8) helper of davfed; `davfed install-helper --uninstall` removes it.
python={shlex.quote(python)}
if [ ! -x "$python" ]; then
    echo "$0: davfed is no longer installed: $python is gone. Reinstall davfed and run \\
\\`davfed install-helper\\` again (see docs/install.md), or remove what it installed: \\
rm -f {remove}" >&2
    exit 32
fi
exec "$python" -I -c {code} "$0" {shlex.quote(remove)} "$@"
"""


def ours(path: Path) -> bool:
    """Whether ``path`` is a file that install-helper wrote (any installation)."""
    try:
        with path.open() as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return MARKER in head


def main(argv: Sequence[str]) -> int:
    parser = UsageParser(
        prog="davfed install-helper",
        description="Install what pip cannot: PREFIX/mount.davfed and PREFIX/mount.fuse.davfed "
        "(mount(8) looks only in /sbin), the manual page davfed(8) and the systemd unit "
        "davfed@.service, all with this installation's absolute paths. --uninstall removes "
        "them again; run it before `pip uninstall davfed`.",
    )
    parser.add_argument("--prefix", default="/sbin", type=Path, help="default: /sbin")
    parser.add_argument(
        "--man-dir", default="/usr/local/share/man", type=Path, help="default: %(default)s"
    )
    parser.add_argument(
        "--unit-dir", default="/etc/systemd/system", type=Path, help="default: %(default)s"
    )
    parser.add_argument("--uninstall", action="store_true", help="remove what it installed")
    args = parser.parse_args(list(argv))
    layout = Layout(args.prefix.absolute(), args.man_dir.absolute(), args.unit_dir.absolute())
    try:
        if args.uninstall:
            uninstall(layout)
        else:
            install(layout)
    except OSError as exc:
        raise MountError(f"install-helper: {exc}") from None
    return Exit.OK


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``path`` atomically unless it already holds ``text``; never over a stranger."""
    if path.is_file() and not path.is_symlink() and path.read_text() == text:
        print(f"{path} (already installed)")
        return
    if path.exists() and not path.is_symlink() and not ours(path):
        raise MountError(f"{path} exists and was not written by davfed; remove it first")
    if path.is_symlink():
        _drop_old_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    print(f"wrote {path}")


def _drop_old_link(link: Path) -> None:
    """Remove a link of an older install-helper and the launcher script it pointed at."""
    target = link.parent / os.readlink(link)
    if target.exists() and not ours(target):
        raise MountError(f"{link} links to {target}, which davfed did not write; remove it first")
    link.unlink()
    if target.is_file():
        target.unlink()
        print(f"removed {target} (an older helper)")


def install(layout: Layout) -> None:
    """Write the helper, its links, the man page and the unit (idempotent)."""
    _write(layout.helper, launcher_script(layout), 0o755)
    for link in layout.links:
        if link.is_symlink() and os.readlink(link) == HELPER_NAME:
            print(f"{link} -> {HELPER_NAME} (already installed)")
            continue
        if link.exists() and not link.is_symlink():
            raise MountError(f"{link} exists and is not a symlink; remove it first")
        if link.is_symlink():
            _drop_old_link(link)
        link.symlink_to(HELPER_NAME)
        print(f"{link} -> {HELPER_NAME}")
    _write(layout.man_page, f'.\\" {MARKER}\n{helptext.man_page()}', 0o644)
    _write(layout.unit, unitfile.unit_text(sys.executable), 0o644)


def uninstall(layout: Layout) -> None:
    """Remove what :func:`install` wrote; leave anything else, saying so."""
    for link in layout.links:
        if link.is_symlink() and os.readlink(link) == HELPER_NAME:
            link.unlink()
            print(f"removed {link}")
        elif link.is_symlink():
            _drop_old_link(link)
            print(f"removed {link}")
        elif link.exists():
            print(f"davfed: leaving {link}: not installed by davfed", file=sys.stderr)
    for path in (layout.helper, layout.man_page, layout.unit):
        if path.is_symlink():
            _drop_old_link(path)
            print(f"removed {path}")
        elif ours(path):
            path.unlink()
            print(f"removed {path}")
        elif path.exists():
            print(f"davfed: leaving {path}: not installed by davfed", file=sys.stderr)
