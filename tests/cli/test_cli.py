"""The command line as users and mount(8) run it: real subprocesses, real exit codes.

The daemon is replaced by ``fake_daemon.py`` through ``DAVFED_DAEMON_COMMAND``,
so these tests do not depend on the FUSE layer. The tests marked ``mount``
make the fake daemon really mount an empty directory with ``fsname=URL`` and
``subtype=davfed``, to check "already mounted", stale mountpoints and umount.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from davfed_fuse.system.mounttable import MountEntry, find_mount, mounts_at
from tests.mounting import wait_until

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "bin" / "mount.davfed"
FAKE = Path(__file__).with_name("fake_daemon.py")
URL = "https://dynafed.example/belle"


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        check=False,
    )


def davfed(*argv: str | Path, env: dict[str, str] | None = None) -> Any:
    return run(sys.executable, "-m", "davfed_fuse", *argv, env=env)


def helper(*argv: str | Path, env: dict[str, str] | None = None) -> Any:
    return run(HELPER, *argv, env=env)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("davfed: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment that makes the launcher run the fake daemon; kills it afterwards."""
    record = tmp_path / "record.json"
    env = {
        "DAVFED_DAEMON_COMMAND": shlex.join([sys.executable, str(FAKE)]),
        "FAKE_DAEMON_RECORD": str(record),
    }
    yield env
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def record_of(env: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(env["FAKE_DAEMON_RECORD"]).read_text())
    return data


def alive(pid: int) -> bool:
    """Running (zombies, which wait for init to reap them, count as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# --- help and version -------------------------------------------------------------


def test_help() -> None:
    result = davfed("--help")
    assert result.returncode == 0
    for command in ("mount", "umount", "install-helper", "testfed"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["mount", "umount", "install-helper"])
def test_subcommand_help(command: str) -> None:
    result = davfed(command, "--help")
    assert result.returncode == 0
    assert f"davfed {command}" in result.stdout


def test_no_arguments_is_a_usage_error() -> None:
    result = davfed()
    assert result.returncode == 1
    assert "usage: davfed" in result.stderr


def test_unknown_command() -> None:
    result = davfed("frobnicate")
    assert result.returncode == 1
    assert "unknown command 'frobnicate'" in result.stderr


@pytest.mark.parametrize("hidden", ["davfed_testfed", "aiohttp"])
def test_testfed_without_its_extra_says_how_to_install_it(tmp_path: Path, hidden: str) -> None:
    """``pip install davfed`` without ``[testfed]``: no test federation, no aiohttp."""
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    shim = (
        f"import sys; sys.modules[{hidden!r}] = None\n"
        "from davfed_fuse.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = run(sys.executable, "-c", shim, "testfed", tmp_path, "--port", "0")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("davfed: the test federation is not installed: ")
    assert "pip install 'davfed[testfed]'" in line
    assert result.stdout == ""


def test_helper_help() -> None:
    result = helper("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: mount.davfed URL MOUNTPOINT")


@pytest.mark.parametrize("how", [("davfed", "--version"), ("davfed", "-V"), ("helper", "-V")])
def test_version(how: tuple[str, str]) -> None:
    result = davfed(how[1]) if how[0] == "davfed" else helper(how[1])
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    for name in ("davfed", "pyfuse3", "libfuse", "trio", "httpx"):
        assert name in names
    assert "unknown" not in result.stdout


# --- usage errors: exit 1, one line, nothing mounted ---------------------------------


@pytest.mark.parametrize("via", ["davfed", "helper"])
def test_unknown_option_names_it(via: str, mountpoint: Path, fake: dict[str, str]) -> None:
    opts = "ro,frobnicate=3,allow_other"
    if via == "davfed":
        result = davfed("mount", "-o", opts, URL, mountpoint, env=fake)
    else:
        result = helper(URL, mountpoint, "-o", opts, env=fake)
    assert result.returncode == 1
    assert one_line(result.stderr) == "davfed: unknown mount option 'frobnicate'"
    assert not Path(fake["FAKE_DAEMON_RECORD"]).exists()


def test_sloppy_helper_only_warns(mountpoint: Path, fake: dict[str, str]) -> None:
    result = helper("-s", URL, "-o", "frobnicate", mountpoint, "-f", env=fake)
    assert result.returncode == 0
    assert "warning: ignoring unknown mount option 'frobnicate'" in result.stderr


@pytest.mark.parametrize("url", ["ftp://dynafed.example/x", "dynafed.example", "https:///x"])
def test_bad_url(url: str, mountpoint: Path) -> None:
    for result in (davfed("mount", url, mountpoint), helper(url, mountpoint)):
        assert result.returncode == 1
        assert "bad URL" in one_line(result.stderr)


@pytest.mark.parametrize(
    "argv",
    [
        ["mount", URL],
        ["mount", URL, "/mnt", "extra"],
        ["mount", "--bogus", URL, "/mnt"],
        ["mount", "-o", "cache_size=lots", URL, "/mnt"],
        ["mount", "--ready-fd", "3", URL, "/mnt"],
        ["umount"],
    ],
)
def test_command_line_usage_errors(argv: list[str]) -> None:
    result = davfed(*argv)
    assert result.returncode == 1
    one_line(result.stderr)


@pytest.mark.parametrize(
    "argv", [[URL], ["-x", URL, "/mnt"], [URL, "/mnt", "-o"], [URL, "/mnt", "-N", "/proc/1/ns"]]
)
def test_helper_usage_errors(argv: list[str]) -> None:
    result = helper(*argv)
    assert result.returncode == 1
    one_line(result.stderr)


# --- mount failures before launching: exit 32 -------------------------------------------


@pytest.mark.parametrize("via", ["davfed", "helper", "foreground"])
def test_missing_mountpoint(via: str, tmp_path: Path, fake: dict[str, str]) -> None:
    missing = tmp_path / "nope"
    if via == "davfed":
        result = davfed("mount", URL, missing, env=fake)
    elif via == "foreground":
        result = davfed("mount", "-f", URL, missing, env=fake)
    else:
        result = helper(URL, missing, env=fake)
    assert result.returncode == 32
    assert one_line(result.stderr) == f"davfed: mountpoint {missing} does not exist"
    assert not Path(fake["FAKE_DAEMON_RECORD"]).exists()


def test_mountpoint_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    result = helper(URL, file)
    assert result.returncode == 32
    assert "is not a directory" in one_line(result.stderr)


def test_foreground_daemon_reports_errors_on_the_ready_fd(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        child = subprocess.run(
            [sys.executable, "-m", "davfed_fuse", "mount", "-f", "--ready-fd", str(write_end),
             URL, str(tmp_path / "nope")],
            pass_fds=(write_end,), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        os.close(write_end)
        report = os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
    assert child.returncode == 32
    assert report == f"ERROR mountpoint {tmp_path / 'nope'} does not exist\n"


# --- the helper's dry run ------------------------------------------------------------


def test_dry_run_prints_the_daemon_command(mountpoint: Path, fake: dict[str, str]) -> None:
    del fake["DAVFED_DAEMON_COMMAND"]
    result = helper(
        URL, mountpoint, "-n", "-o", "ro,_netdev,allow_other", "-f", "-o", "cache_size=1G",
        "-v", "-t", "davfed", env=fake,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout)
    assert command[1:4] == ["-I", "-m", "davfed_fuse"]
    assert command[4:8] == ["mount", "-f", "--ready-fd", "FD"]
    assert command[8:10] == ["-o", "allow_other,cache_size=1G,log_level=debug"]
    assert command[10:] == ["--", URL, str(mountpoint)]
    assert not Path(fake["FAKE_DAEMON_RECORD"]).exists()


def test_mount_fuse_calls_davfed_with_the_url_first(mountpoint: Path) -> None:
    # libfuse's mount.fuse runs: davfed URL DIR -o OPTS
    result = davfed(URL, mountpoint, "-o", "rw,allow_other", "-f")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[-5:] == ["-o", "allow_other", "--", URL, str(mountpoint)]


# --- launching: READY, ERROR, death, timeout ---------------------------------------------


@pytest.mark.parametrize("via", ["helper", "davfed"])
def test_ready_daemon_means_exit_0(via: str, mountpoint: Path, fake: dict[str, str]) -> None:
    opts = "allow_other,env.HTTPS_PROXY=http://squid:3128,_netdev"
    if via == "helper":
        result = helper(URL, mountpoint, "-o", opts, env=fake)
    else:
        result = davfed("mount", "-o", opts, URL, mountpoint, env=fake)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    record = record_of(fake)
    assert (record["url"], record["mountpoint"]) == (URL, str(mountpoint))
    assert record["options"] == ["allow_other,env.HTTPS_PROXY=http://squid:3128"]
    assert record["cwd"] == "/"
    assert record["sid"] == record["pid"]  # its own session
    assert record["env"]["HTTPS_PROXY"] == "http://squid:3128"
    assert "DAVFED_DAEMON_COMMAND" not in record["env"]
    assert record["env"]["HOME"]


def test_error_report_is_relayed(mountpoint: Path, fake: dict[str, str]) -> None:
    result = helper(URL, mountpoint, env={**fake, "FAKE_DAEMON_MODE": "error"})
    assert result.returncode == 32
    assert one_line(result.stderr) == f"davfed: cannot reach {URL}: connection refused"


def test_daemon_death_is_a_mount_failure(mountpoint: Path, fake: dict[str, str]) -> None:
    result = helper(URL, mountpoint, env={**fake, "FAKE_DAEMON_MODE": "die"})
    assert result.returncode == 32
    assert "exited with status 3 before the mount was ready" in one_line(result.stderr)


def test_garbage_report_is_a_mount_failure(mountpoint: Path, fake: dict[str, str]) -> None:
    result = helper(URL, mountpoint, env={**fake, "FAKE_DAEMON_MODE": "garbage"})
    assert result.returncode == 32
    assert "unexpected report: 'HELLO'" in one_line(result.stderr)
    assert not alive(record_of(fake)["pid"])


def test_silent_daemon_times_out_and_is_killed(mountpoint: Path, fake: dict[str, str]) -> None:
    started = time.monotonic()
    result = helper(
        URL, mountpoint, "-o", "mount_timeout=1.5", env={**fake, "FAKE_DAEMON_MODE": "silent"}
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 32
    assert "not ready after 1.5 s (mount_timeout)" in one_line(result.stderr)
    assert 1.5 <= elapsed < 15
    assert not alive(record_of(fake)["pid"])
    assert find_mount(mountpoint) is None


def test_log_file_receives_the_daemon_stderr(
    mountpoint: Path, fake: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "davfed.log"
    result = helper(URL, mountpoint, "-o", f"log_file={log}", env=fake)
    assert result.returncode == 0
    assert log.exists()


def test_unopenable_log_file(mountpoint: Path, fake: dict[str, str], tmp_path: Path) -> None:
    result = helper(URL, mountpoint, "-o", f"log_file={tmp_path}/no/such/dir/x.log", env=fake)
    assert result.returncode == 32
    assert "cannot open log_file" in one_line(result.stderr)


# --- umount ----------------------------------------------------------------------------


def test_umount_of_something_not_mounted(mountpoint: Path) -> None:
    result = davfed("umount", mountpoint)
    assert result.returncode == 32
    assert one_line(result.stderr) == f"davfed: {mountpoint} is not mounted"


def test_umount_refuses_other_filesystems() -> None:
    result = davfed("umount", "/")
    assert result.returncode == 32
    assert "not davfed" in one_line(result.stderr)


# --- install-helper ----------------------------------------------------------------------


def install_args(tmp_path: Path) -> list[str]:
    return [
        "install-helper",
        *("--prefix", str(tmp_path / "sbin")),
        *("--man-dir", str(tmp_path / "man")),
        *("--unit-dir", str(tmp_path / "units")),
    ]


def test_install_helper_is_idempotent_and_uninstalls(tmp_path: Path, mountpoint: Path) -> None:
    prefix = tmp_path / "sbin"
    prefix.mkdir()
    args = install_args(tmp_path)
    first = davfed(*args)
    assert first.returncode == 0, first.stderr
    assert os.readlink(prefix / "mount.fuse.davfed") == "mount.davfed"
    assert os.access(prefix / "mount.davfed", os.X_OK)
    second = davfed(*args)
    assert second.returncode == 0
    assert second.stdout.count("already installed") == 4

    # mount(8) would run the link: helper mode from argv[0].
    dry = run(prefix / "mount.fuse.davfed", URL, mountpoint, "-f", "-o", "allow_other")
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout)[-5:] == ["-o", "allow_other", "--", URL, str(mountpoint)]
    assert run(prefix / "mount.davfed", "-V").stdout.startswith("davfed ")

    removed = davfed(*args, "--uninstall")
    assert removed.returncode == 0
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_install_helper_will_not_overwrite_a_real_file(tmp_path: Path) -> None:
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin" / "mount.davfed").write_text("#!/bin/sh\n")
    result = davfed(*install_args(tmp_path))
    assert result.returncode == 32
    assert "was not written by davfed" in one_line(result.stderr)
    assert (tmp_path / "sbin" / "mount.davfed").read_text() == "#!/bin/sh\n"


# --- real FUSE mounts by the fake daemon -------------------------------------------------

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)


def davfed_mounts(path: Path) -> list[MountEntry]:
    return [e for e in mounts_at(path, resolve=False) if e.is_davfed]


@pytest.fixture
def fuse_env(fake: dict[str, str], mountpoint: Path) -> Iterator[dict[str, str]]:
    yield {**fake, "FAKE_DAEMON_MODE": "fuse"}
    for _ in range(5):
        if not davfed_mounts(mountpoint):
            break
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, check=False)


@pytest.mark.mount
@needs_fuse
def test_real_mount_already_mounted_stale_and_umount(
    mountpoint: Path, fuse_env: dict[str, str]
) -> None:
    result = helper(URL, mountpoint, "-o", "ro,_netdev", env=fuse_env)
    assert result.returncode == 0, result.stderr
    [entry] = davfed_mounts(mountpoint)
    assert entry.source == URL
    assert os.listdir(mountpoint) == []

    # mount -a run again: the same URL is already there.
    again = helper(URL, mountpoint, "-o", "ro", env=fuse_env)
    assert again.returncode == 0
    assert one_line(again.stderr) == f"davfed: {URL} is already mounted on {mountpoint}"
    assert len(davfed_mounts(mountpoint)) == 1

    # Another URL on the same directory is refused.
    other = helper("https://other.example/", mountpoint, env=fuse_env)
    assert other.returncode == 32
    assert "already holds a davfed mount" in one_line(other.stderr)

    # The daemon dies: the mountpoint is stale, and mounting again detaches it first.
    pid = record_of(fuse_env)["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid)), "the fake daemon survived SIGKILL"
    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        os.listdir(mountpoint)
    revived = helper(URL, mountpoint, env=fuse_env)
    assert revived.returncode == 0, revived.stderr
    assert "detaching it" in revived.stderr
    assert len(davfed_mounts(mountpoint)) == 1
    assert os.listdir(mountpoint) == []

    done = davfed("umount", mountpoint)
    assert done.returncode == 0, done.stderr
    assert davfed_mounts(mountpoint) == []
    assert wait_until(lambda: not alive(record_of(fuse_env)["pid"]))


@pytest.mark.mount
@needs_fuse
def test_real_mount_helper_via_mount8(
    tmp_path: Path, mountpoint: Path, fuse_env: dict[str, str]
) -> None:
    """`mount -t davfed` through a helper installed in a private prefix is not possible
    (mount(8) only looks in /sbin), so run the installed link the way mount(8) does."""
    prefix = tmp_path / "sbin"
    prefix.mkdir()
    davfed(*install_args(tmp_path))
    result = run(prefix / "mount.davfed", URL, mountpoint, "-n", "-o", "rw,_netdev", env=fuse_env)
    assert result.returncode == 0, result.stderr
    assert [e.source for e in davfed_mounts(mountpoint)] == [URL]
    assert davfed("umount", mountpoint).returncode == 0
    assert davfed_mounts(mountpoint) == []
