"""davfed@.service as install-helper writes it: systemd-analyze verify, its settings, and
the daemon under it (READY=1 after the federation answered, STOPPING=1 on shutdown, a
federation down at boot outlasted by restarts)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from davfed_fuse.cli.unitfile import NAMESPACE_SETTINGS, unit_text
from davfed_testfed import TestFederation
from tests.deploy.unitrun import UnitRun, one, parse_unit, values
from tests.mounting import is_mounted, requires_fuse, unmount, wait_until

REPO = Path(__file__).resolve().parents[2]


def install(tmp_path: Path) -> Path:
    """install-helper into a private prefix; the directory holding sbin/ man/ units/."""
    root = tmp_path / "root"
    subprocess.run(
        [
            *(sys.executable, "-m", "davfed_fuse", "install-helper"),
            *("--prefix", str(root / "sbin"), "--man-dir", str(root / "man")),
            *("--unit-dir", str(root / "units")),
        ],
        check=True,
        capture_output=True,
    )
    return root


def test_the_repositorys_unit_is_what_install_helper_writes_for_opt_davfed() -> None:
    text = unit_text(
        "/opt/davfed/bin/python", fusermount="/usr/bin/fusermount3", mkdir="/usr/bin/mkdir"
    )
    assert (REPO / "systemd" / "davfed@.service").read_text() == text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_passes_with_its_documentation(tmp_path: Path) -> None:
    root = install(tmp_path)
    unit = root / "units" / "davfed@.service"
    (root / "units" / "davfed@dynafed-belle.service").symlink_to(unit.name)
    env = {**os.environ, "MANPATH": str(root / "man")}  # Documentation=man:davfed(8)
    for name in ("davfed@.service", "davfed@dynafed-belle.service"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(root / "units" / name)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert (result.returncode, result.stderr) == (0, ""), name
    # Without the manual page, its Documentation= is caught: the check is real.
    (root / "man" / "man8" / "davfed.8").unlink()
    missing = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert "man davfed(8)" in missing.stderr


def test_the_unit_hardens_what_a_fuse_mount_allows_and_never_gives_up(tmp_path: Path) -> None:
    unit = parse_unit((install(tmp_path) / "units" / "davfed@.service").read_text())
    assert one(unit, "StartLimitIntervalSec") == "0"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "RestartPreventExitStatus") == "1"  # 32 (federation down) restarts
    assert one(unit, "UMask") == "0077"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "CapabilityBoundingSet") == "CAP_SYS_ADMIN"
    assert (one(unit, "CacheDirectory"), one(unit, "CacheDirectoryMode")) == ("davfed", "0700")
    assert one(unit, "Type") == "notify"
    keys = {key for _, key, _ in unit}
    assert not keys & {s.rstrip("=") for s in NAMESPACE_SETTINGS}
    for line in values(unit, "ExecStartPre") + values(unit, "ExecStart") + values(unit, "ExecStop"):
        program = line.lstrip("-").split()[0]
        assert os.path.isabs(program) and os.access(program, os.X_OK), line
    assert one(unit, "ExecStart").startswith(f"{sys.executable} -I -m davfed_fuse mount -f ")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[UnitRun]:
    root = install(tmp_path)
    run = UnitRun(
        root / "units" / "davfed@.service",
        tmp_path / "dynafed" / "belle",
        env_dir=root / "etc-davfed",
        cache_root=root / "var-cache",
    )
    yield run
    run.close()
    unmount(run.mountpoint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.mount
@requires_fuse
def test_service_down_at_boot_then_ready_then_stopping(
    service: UnitRun, testfed_tree: Path, testfed_files: dict[str, bytes]
) -> None:
    port = free_port()
    service.env_dir.mkdir()
    (service.env_dir / f"{service.instance}.env").write_text(
        f"DAVFED_URL=http://127.0.0.1:{port}/myfed/\n"
        "DAVFED_OPTIONS=allow_other,retries=1,mount_timeout=10\n"
    )
    # Boot: the federation does not answer. The start fails with 32 (which the unit
    # restarts on), with a STATUS= and no READY=1.
    first = service.start()
    got = service.messages("READY=1", timeout=60)
    assert first.wait(30) == 32, service.journal.read_text()
    assert not any("READY=1" in m.splitlines() for m in got)
    assert any(m.startswith("STATUS=mount failed:") for m in got), got
    assert not is_mounted(service.mountpoint)
    assert service.mountpoint.is_dir()  # ExecStartPre made it

    # The restart after the federation came up: READY=1 once it answered and serves.
    with TestFederation(testfed_tree, port=port, endpoints=1):
        main = service.start()
        got = service.messages("READY=1", timeout=60)
        assert got and got[-1].splitlines()[0] == "READY=1", got
        assert f"STATUS=mounted http://127.0.0.1:{port}/myfed/ on {service.mountpoint}" in got[-1]
        assert (service.mountpoint / "hello.txt").read_bytes() == testfed_files["hello.txt"]
        # UMask=0077 and CacheDirectoryMode=0700: nothing in the cache for others.
        cache = service.cache_root / "davfed"
        assert cache.stat().st_mode & 0o777 == 0o700
        for path in cache.rglob("*"):
            assert path.stat().st_mode & 0o077 == 0, path

        # systemctl stop: ExecStop= unmounts, the daemon says STOPPING=1 and exits 0.
        service.stop()
        got = service.messages("STOPPING=1", timeout=30)
        assert any(m.splitlines()[0] == "STOPPING=1" for m in got), got
        assert main.wait(30) == 0
        assert not is_mounted(service.mountpoint)

        # SIGTERM (systemd's KillMode=mixed on a busy mount): STOPPING=1 too, unmounted.
        main = service.start()
        assert any("READY=1" in m.splitlines() for m in service.messages("READY=1", 60))
        main.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in m.splitlines() for m in service.messages("STOPPING=1", 30))
        assert main.wait(30) == 0
        assert wait_until(lambda: not is_mounted(service.mountpoint))
