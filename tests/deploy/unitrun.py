"""Run a davfed@.service instance the way systemd would, without systemd as PID 1.

This machine has no systemd manager to ``systemctl start`` a unit, so :class:`UnitRun`
does the parts of it that the unit's behaviour depends on, from the unit file itself:
the ``EnvironmentFile=``, ``%i``/``%f`` and ``${VAR}`` expansion of the command lines
(``${VAR}`` one word, as systemd does), ``CACHE_DIRECTORY`` created with
``CacheDirectoryMode=``, ``UMask=``, ``NoNewPrivileges=`` and
``CapabilityBoundingSet=`` (through ``setpriv``), and a ``NOTIFY_SOCKET`` listener
(a unix datagram socket this process binds), then ``ExecStartPre=``, ``ExecStart=``
and ``ExecStop=`` in order. Shared by the systemd and cloud-init tests.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order (keys may repeat)."""
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: list[tuple[str, str, str]], key: str) -> list[str]:
    return [v for _, k, v in unit if k == key]


def one(unit: list[tuple[str, str, str]], key: str) -> str:
    [value] = values(unit, key)
    return value


def instance_name(mountpoint: Path) -> str:
    """``systemd-escape --path``, by the real tool."""
    return subprocess.run(
        ["systemd-escape", "--path", str(mountpoint)], capture_output=True, text=True, check=True
    ).stdout.strip()


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


@dataclass
class UnitRun:
    """One instance of a template unit, for ``mountpoint``."""

    unit_file: Path
    mountpoint: Path
    env_dir: Path  # stands for /etc/davfed
    cache_root: Path  # stands for /var/cache
    instance: str = ""  # default: the escaped mountpoint
    notify: socket.socket = field(init=False)
    main: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.unit = parse_unit(self.unit_file.read_text())
        self.instance = self.instance or instance_name(self.mountpoint)
        self.socket_path = self.cache_root / "notify.sock"
        self.journal = self.cache_root / "journal.log"  # the daemon's stdout and stderr
        self.cache_root.mkdir(parents=True, exist_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.socket_path))
        self.notify.settimeout(0.2)

    def environment(self) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
        for assignment in values(self.unit, "Environment"):
            key, _, value = assignment.partition("=")
            env[key] = value
        env_file = one(self.unit, "EnvironmentFile").replace("%i", self.instance)
        assert env_file.startswith("/etc/davfed/"), env_file
        env.update(read_env_file(self.env_dir / Path(env_file).name))
        cache = self.cache_root / one(self.unit, "CacheDirectory")
        cache.mkdir(exist_ok=True)
        cache.chmod(int(one(self.unit, "CacheDirectoryMode"), 8))
        env["CACHE_DIRECTORY"] = str(cache)
        env["NOTIFY_SOCKET"] = str(self.socket_path)
        return env

    def argv(self, line: str, env: dict[str, str]) -> tuple[list[str], bool]:
        """The command of an Exec line, expanded; and whether its failure is ignored."""
        ignore = line.startswith("-")
        words = []
        for word in shlex.split(line.lstrip("-")):
            word = word.replace("%f", str(self.mountpoint)).replace("%i", self.instance)
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
        return words, ignore

    def sandbox(self) -> list[str]:
        """``setpriv`` arguments for NoNewPrivileges= and CapabilityBoundingSet=."""
        caps = one(self.unit, "CapabilityBoundingSet").split()
        bounding = ",".join(["-all", *("+" + c.removeprefix("CAP_").lower() for c in caps)])
        out = ["setpriv", f"--bounding-set={bounding}"]
        if one(self.unit, "NoNewPrivileges") == "yes":
            out.append("--no-new-privs")
        return [*out, "--"]

    def _preexec(self) -> None:
        os.umask(int(one(self.unit, "UMask"), 8))

    def start(self) -> subprocess.Popen[bytes]:
        """ExecStartPre= lines (in the sandbox), then ExecStart= in the background."""
        env = self.environment()
        for line in values(self.unit, "ExecStartPre"):
            argv, ignore = self.argv(line, env)
            done = subprocess.run([*self.sandbox(), *argv], env=env, preexec_fn=self._preexec)
            assert ignore or done.returncode == 0, f"{argv} failed"
        argv, _ = self.argv(one(self.unit, "ExecStart"), env)
        with self.journal.open("ab") as journal:
            self.main = subprocess.Popen(
                [*self.sandbox(), *argv],
                env=env,
                cwd="/",
                preexec_fn=self._preexec,
                stdout=journal,
                stderr=journal,
            )
        return self.main

    def stop(self) -> None:
        """ExecStop= lines, as ``systemctl stop`` runs them."""
        env = self.environment()
        for line in values(self.unit, "ExecStop"):
            argv, _ = self.argv(line, env)
            subprocess.run([*self.sandbox(), *argv], env=env, capture_output=True)

    def messages(self, until: str, timeout: float) -> list[str]:
        """Notify datagrams received until one holds ``until`` (or the main process ended
        and the socket is drained, or ``timeout`` seconds)."""
        import time

        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                if self.main is not None and self.main.poll() is not None:
                    break
                continue
            if until in got[-1].splitlines():
                break
        return got

    def close(self) -> None:
        self.notify.close()
        if self.main is not None and self.main.poll() is None:
            self.main.terminate()
            self.main.wait(30)
