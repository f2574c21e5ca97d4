"""docs/cloud-init.md's user-data: ``cloud-init schema`` accepts it, and its write_files and
runcmd, run here with paths moved into a temporary root, install the wheel, fetch the
proxy and start the mount unit, which serves the test federation.

Replaced, and only these: the package managers (a shim that records the call; the Debian
packages it names must exist), ``systemctl`` (tests/deploy/systemctl_shim.py runs the unit
file's commands as systemd would), the wheel URL (the wheel built from a clean copy), the
credential server (a file:// URL of a real proxy), the federation URL (the test
federation), and the absolute paths (under the temporary root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.deploy.conftest import REPO
from tests.mounting import is_mounted, requires_fuse, unmount, wait_until
from tests.testfed_fixtures import HTTPS_MISSING

DOC = REPO / "docs" / "cloud-init.md"
needs_cloud_init = pytest.mark.skipif(
    shutil.which("cloud-init") is None, reason="cloud-init not installed (Debian package)"
)
WHEEL_URL = "https://repo.example.org/davfed/davfed-0.1.0-py3-none-any.whl"
CREDS_URL = "https://creds.example.org/belle/x509up"
FED_URL = "https://dynafed.example/belle"


def user_data() -> str:
    match = re.search(r"```yaml\n(#cloud-config\n.*?)```", DOC.read_text(), re.S)
    assert match, "no #cloud-config block in docs/cloud-init.md"
    return match.group(1)


def as_json(yaml_text: str) -> dict[str, object]:
    """The YAML parsed by the system Python's yaml (cloud-init's own dependency)."""
    done = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import json,sys,yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=yaml_text,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, object] = json.loads(done.stdout)
    return loaded


@needs_cloud_init
def test_cloud_init_schema_accepts_the_recipe(tmp_path: Path) -> None:
    good = tmp_path / "user-data"
    good.write_text(user_data())
    result = subprocess.run(["cloud-init", "schema", "-c", good], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    bad = tmp_path / "bad"
    bad.write_text(user_data().replace('    permissions: "0755"', "    permissions: [1]", 1))
    result = subprocess.run(["cloud-init", "schema", "-c", bad], capture_output=True, text=True)
    assert result.returncode != 0  # the check is real


def test_the_debian_packages_it_installs_exist() -> None:
    script = next(
        f["content"]
        for f in as_json(user_data())["write_files"]  # type: ignore[attr-defined]
        if f["path"] == "/usr/local/sbin/davfed-install"
    )
    line = re.search(r"apt-get install -y -q (.*?)\n\s*python=", script, re.S)
    assert line
    packages = line.group(1).replace("\\", " ").split()
    assert "libfuse3-dev" in packages and "python3-venv" in packages
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def redirect(text: str, root: Path, wheel: Path, proxy: Path, fed_url: str) -> str:
    text = text.replace(WHEEL_URL, str(wheel)).replace(CREDS_URL, proxy.as_uri())
    text = text.replace(FED_URL, fed_url)
    text = text.replace(
        "davfed install-helper",
        f"davfed install-helper --prefix {root}/sbin --man-dir {root}/man --unit-dir {root}/units",
    )
    for path in ("/etc/davfed", "/usr/local/sbin", "/etc/cron.d", "/opt/davfed"):
        text = re.sub(rf"(?<![\w/]){re.escape(path)}", f"{root}{path}", text)
    return text


@pytest.mark.mount
@pytest.mark.slow
@requires_fuse
@pytest.mark.skipif(HTTPS_MISSING is not None, reason=str(HTTPS_MISSING))
def test_the_recipe_installs_and_mounts(
    tmp_path: Path,
    wheel: Path,
    testfed_tree: Path,
    testfed_files: dict[str, bytes],
    testfed_pki: object,
) -> None:
    root = tmp_path / "root"
    proxy = testfed_pki.proxy("alice", out=tmp_path / "served-proxy")  # type: ignore[attr-defined]
    shims, log = tmp_path / "shims", tmp_path / "calls.log"
    shims.mkdir()
    for manager in ("apt-get", "dnf"):
        (shims / manager).write_text(f'#!/bin/sh\necho "{manager} $*" >> {log}\n')
    (shims / "systemctl").write_text(
        f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m tests.deploy.systemctl_shim "$@"\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {
        "PATH": f"{shims}:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "SHIM_ROOT": str(root),
        "SHIM_LOG": str(log),
        "PYTHONPATH": "",
    }
    for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT"):
        if key in os.environ:
            env[key] = os.environ[key]
    with TestFederation(testfed_tree, endpoints=2) as fed:
        data = as_json(redirect(user_data(), root, wheel, proxy, fed.url))
        for entry in data["write_files"]:  # type: ignore[attr-defined]
            path = Path(entry["path"])
            assert path.is_relative_to(root), path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(entry["content"])
            path.chmod(int(entry.get("permissions", "0644"), 8))
        mountpoint = root / "dynafed" / "belle"
        try:
            for command in data["runcmd"]:  # type: ignore[attr-defined]
                result = subprocess.run(
                    command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
                )
                assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
            assert is_mounted(mountpoint)
            assert (mountpoint / "hello.txt").read_bytes() == testfed_files["hello.txt"]
            assert (mountpoint / "data" / "big.bin").read_bytes() == testfed_files["data/big.bin"]
        finally:
            unmount(mountpoint)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("apt-get update")  # this is Debian: the apt branch ran
    assert "systemctl enable --now davfed@dynafed-belle.service" in calls
    # The proxy: fetched, private; the cron line runs a script that exists.
    fetched = root / "etc" / "davfed" / "x509up"
    assert fetched.read_bytes() == proxy.read_bytes()
    assert stat.S_IMODE(fetched.stat().st_mode) == 0o600
    [cron] = [
        line
        for line in (root / "etc/cron.d/davfed-proxy").read_text().splitlines()
        if line and line[0] != "#"
    ]
    fields = cron.split()
    assert len(fields) == 7 and fields[5] == "root"
    assert os.access(fields[6], os.X_OK), fields[6]
    assert (root / "opt/davfed/bin/davfed").exists() and (root / "sbin/mount.davfed").exists()
    assert wait_until(lambda: not is_mounted(mountpoint))
