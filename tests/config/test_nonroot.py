"""Mounts by an unprivileged user (uid 65534), for real: the per-user default cache, and
fusermount3's own reason when it refuses a mount.

The machine's /dev/fuse may be root-only (Debian makes it 0666; containers often 0600):
the fixture grants uid 65534 read and write on it with a POSIX ACL for the test and puts
the device back as it was afterwards. The checkout's venv may run an interpreter under
/root, which the user cannot reach: then the same Python version from /usr/bin runs
davfed with the venv's packages on PYTHONPATH (the compiled modules share its ABI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.mounting import is_mounted, unmount

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]
UID = 65534
ACL = "system.posix_acl_access"
ALLOW_OTHER_REFUSED = (
    "option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf"
)


def _acl_for(uid: int) -> bytes:
    """A POSIX access ACL: owner rw, ``uid`` rw, nobody else (the xattr's binary form)."""

    def entry(tag: int, perm: int, ident: int = 0xFFFFFFFF) -> bytes:
        return struct.pack("<HHI", tag, perm, ident)

    user_obj, user, group_obj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
    return struct.pack("<I", 2) + b"".join(
        [
            entry(user_obj, 6),
            entry(user, 6, uid),
            entry(group_obj, 0),
            entry(mask, 6),
            entry(other, 0),
        ]
    )


def as_user(*argv: str, env: dict[str, str], cwd: str = "/") -> subprocess.CompletedProcess[str]:
    command = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "env", "-i"]
    command += [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=90, cwd=cwd, check=False
    )


@pytest.fixture(scope="module")
def fuse_for_user() -> Iterator[None]:
    """/dev/fuse usable by UID for the duration of the module (restored afterwards)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run commands as an unprivileged user")
    fusermount = shutil.which("fusermount3")
    if fusermount is None or not os.stat(fusermount).st_mode & stat.S_ISUID:
        pytest.skip("needs a setuid fusermount3")
    before = os.stat("/dev/fuse")
    try:
        old_acl: bytes | None = os.getxattr("/dev/fuse", ACL)
    except OSError:
        old_acl = None
    if before.st_mode & 0o006 != 0o006:
        try:
            os.setxattr("/dev/fuse", ACL, _acl_for(UID))
        except OSError as exc:
            pytest.skip(f"cannot let uid {UID} open /dev/fuse (no POSIX ACLs: {exc.strerror})")
    try:
        yield
    finally:
        if old_acl is None:
            with contextlib.suppress(OSError):
                os.removexattr("/dev/fuse", ACL)
        else:
            os.setxattr("/dev/fuse", ACL, old_acl)
        os.chmod("/dev/fuse", stat.S_IMODE(before.st_mode))


@pytest.fixture(scope="module")
def python(fuse_for_user: None, user_home: Path) -> tuple[str, dict[str, str]]:
    """An interpreter the user can run davfed with, and the environment it needs."""
    paths = dict.fromkeys(
        [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": os.pathsep.join(paths)}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}"):
        probe = as_user(candidate, "-c", "import pyfuse3, trio, httpx, davfed_fuse", env=env)
        if probe.returncode == 0:
            # The launcher starts the daemon with the same interpreter and PYTHONPATH.
            return candidate, {**env, "DAVFED_DAEMON_COMMAND": f"{candidate} -m davfed_fuse"}
    pytest.skip(f"uid {UID} cannot run davfed with {sys.executable} or /usr/bin/{version}")


@pytest.fixture(scope="module")
def user_home() -> Iterator[Path]:
    """A directory tree the user owns (under a root-owned, world-searchable parent)."""
    top = Path(tempfile.mkdtemp(prefix="davfed-user-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    os.chown(home, UID, UID)
    try:
        yield home
    finally:
        shutil.rmtree(top, ignore_errors=True)


def user_dir(home: Path, name: str) -> Path:
    path = home / name
    path.mkdir()
    os.chown(path, UID, UID)
    return path


@pytest.fixture
def mountpoints() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        unmount(path)
    assert not [p for p in made if is_mounted(p)]


def test_a_user_mount_uses_a_per_user_cache(
    testfed: TestFederation,
    testfed_files: dict[str, bytes],
    python: tuple[str, dict[str, str]],
    user_home: Path,
    mountpoints: list[Path],
) -> None:
    interpreter, env = python
    # $XDG_CACHE_HOME/davfed when it is set ...
    xdg = user_dir(user_home, "xdg-cache")
    mnt = user_dir(user_home, "mnt-xdg")
    mountpoints.append(mnt)
    result = as_user(
        interpreter,
        "-m",
        "davfed_fuse",
        "mount",
        testfed.url,
        str(mnt),
        env={**env, "XDG_CACHE_HOME": str(xdg), "HOME": str(user_home)},
    )
    assert result.returncode == 0, result.stderr
    read = as_user("cat", str(mnt / "hello.txt"), env=env)
    assert read.returncode == 0 and read.stdout.encode() == testfed_files["hello.txt"]
    roots = list((xdg / "davfed").iterdir())
    assert len(roots) == 1
    info = roots[0].stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (UID, 0o700)
    assert any(p.is_file() for p in roots[0].rglob("*") if p.parent.parent.name != "v1")
    # ... else ~/.cache/davfed.
    mnt2 = user_dir(user_home, "mnt-home")
    mountpoints.append(mnt2)
    result = as_user(
        interpreter,
        "-m",
        "davfed_fuse",
        "mount",
        testfed.url,
        str(mnt2),
        env={**env, "HOME": str(user_home)},
    )
    assert result.returncode == 0, result.stderr
    assert as_user("cat", str(mnt2 / "hello.txt"), env=env).returncode == 0
    assert (user_home / ".cache" / "davfed").is_dir()
    assert stat.S_IMODE((user_home / ".cache" / "davfed").stat().st_mode) == 0o700


def _mount_error(python: tuple[str, dict[str, str]], url: str, mnt: Path, *opts: str) -> str:
    interpreter, env = python
    result = as_user(
        interpreter,
        "-m",
        "davfed_fuse",
        "mount",
        *opts,
        url,
        str(mnt),
        env={**env, "XDG_CACHE_HOME": str(mnt.parent / f"cache-{mnt.name}")},
    )
    assert result.returncode == 32, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not is_mounted(mnt)
    return lines[0]


def test_allow_other_refused_by_fuse_conf_says_so(
    testfed: TestFederation, python: tuple[str, dict[str, str]], user_home: Path
) -> None:
    fuse_conf = Path("/etc/fuse.conf")
    if fuse_conf.exists() and any(
        line.strip() == "user_allow_other" for line in fuse_conf.read_text().splitlines()
    ):
        pytest.skip("/etc/fuse.conf allows allow_other for users here")
    mnt = user_dir(user_home, "mnt-allow-other")
    error = _mount_error(python, testfed.url, mnt, "-o", "allow_other")
    assert error == f"davfed: cannot mount on {mnt}: {ALLOW_OTHER_REFUSED}"


def test_a_mountpoint_the_user_cannot_write_says_so(
    testfed: TestFederation, python: tuple[str, dict[str, str]], user_home: Path
) -> None:
    mnt = user_home / "mnt-of-root"
    mnt.mkdir()  # root's, 0755
    (user_home / "cache-mnt-of-root").mkdir()
    os.chown(user_home / "cache-mnt-of-root", UID, UID)
    error = _mount_error(python, testfed.url, mnt)
    assert error == f"davfed: cannot mount on {mnt}: user has no write access to mountpoint {mnt}"
