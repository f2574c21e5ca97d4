"""The pieces under test and around them: davfed and rclone mounts, federations, the link."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    CLEANUP,
    CLIENT_ADDR,
    DAVFED,
    MOUNT_HELPER,
    SERVER_ADDR,
    WAN_DELAY_MS,
    WAN_RATE,
    WAN_TOOL,
    BenchError,
    MiB,
    in_netns,
    log_bytes,
    mounted,
    run,
    say,
    wait_mounted,
)
from davfed_fuse.system.mounttable import daemon_pid


class Workspace:
    """The temporary tree of one run: data, mountpoints, cache dirs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="davfed-bench-", dir="/tmp"))
        CLEANUP.push("temporary files", lambda: shutil.rmtree(self.root, ignore_errors=True))
        self.data = self.root / "data"
        self.data.mkdir()
        self._n = 0

    def fresh(self, what: str) -> Path:
        self._n += 1
        path = self.root / f"{what}{self._n}"
        path.mkdir()
        return path


def write_random(path: Path, size: int) -> str:
    """A file of random bytes; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


#: A counter of the bytes the storage endpoints have sent so far.
Fetched = Callable[[], int]


class Mount(Protocol):
    """What the rows need of a mounted filesystem (davfed's or rclone's)."""

    mnt: Path
    pid: int | None

    def close(self) -> None: ...


class DavfedMount:
    """``bin/mount.davfed`` with a fresh cache dir, optionally in a client namespace."""

    def __init__(
        self, ws: Workspace, url: str, netns: str | None = None, extra_opts: str = ""
    ) -> None:
        self.mnt = ws.fresh("mnt")
        self.cache_dir = ws.fresh("cache")
        opts = f"cache_dir={self.cache_dir}" + (f",{extra_opts}" if extra_opts else "")
        self.pid: int | None = None
        # registered first: an interrupt during the helper may still leave a daemon mounting
        self._key = CLEANUP.push(f"davfed mount {self.mnt}", self._umount)
        run(in_netns(netns, [str(MOUNT_HELPER), url, str(self.mnt), "-o", opts]), timeout=120)
        self.pid = daemon_pid(self.mnt)
        if self.pid is None:
            say(f"warning: no daemon process found for {self.mnt}; no CPU/RSS figures")

    def _umount(self) -> None:
        pid = self.pid or daemon_pid(self.mnt)
        alive = lambda: pid is not None and Path(f"/proc/{pid}").exists()  # noqa: E731
        deadline = time.monotonic() + 10
        while alive() and not mounted(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)  # a daemon still starting up: let it mount, then unmount it
        if mounted(self.mnt):
            run([str(DAVFED), "umount", str(self.mnt)], check=False, timeout=60)
        if mounted(self.mnt):
            run(["umount", "-l", str(self.mnt)], check=False, timeout=30)
        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid is not None and alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        CLEANUP.release(self._key)

    def block_files(self) -> list[Path]:
        """Block files of the (single) file read through this mount, in block order."""
        dirs = {p.parent for p in self.cache_dir.glob("*/v1/*/*/*") if p.name.isdigit()}
        if len(dirs) != 1:
            raise BenchError(f"expected the blocks of one file in {self.cache_dir}, got {dirs}")
        files = [p for p in dirs.pop().iterdir() if p.name.isdigit()]
        return sorted(files, key=lambda p: int(p.name))


class RcloneMount:
    """``rclone mount`` of a webdav remote (one nginx endpoint), full VFS cache."""

    def __init__(
        self, ws: Workspace, base_url: str, netns: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.mnt = ws.fresh("rmnt")
        cache_dir = ws.fresh("rcache")
        conf = cache_dir / "rclone.conf"
        conf.write_text(f"[bench]\ntype = webdav\nurl = {base_url}\nvendor = other\n")
        cmd = [
            "rclone", "mount", "bench:", str(self.mnt),
            "--config", str(conf),
            "--cache-dir", str(cache_dir / "cache"),
            "--vfs-cache-mode", "full",
            "--read-only",
            "--dir-cache-time", "1h",
            "--log-file", str(cache_dir / "rclone.log"),
            *(extra or []),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._key = CLEANUP.push(f"rclone mount {self.mnt}", self._umount)
        self.proc = subprocess.Popen(
            in_netns(netns, cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_mounted(self.mnt, self.proc, 30)
        self.pid: int | None = self.proc.pid  # nsenter execs rclone (no fork without --pid)

    def _umount(self) -> None:
        if mounted(self.mnt):
            run(["fusermount3", "-u", str(self.mnt)], check=False, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if mounted(self.mnt):
            run(["umount", "-l", str(self.mnt)], check=False, timeout=30)

    def close(self) -> None:
        CLEANUP.release(self._key)


def rclone_chunk_streams_supported() -> bool:
    proc = run(["rclone", "mount", "--help"], check=False, timeout=30)
    return "--vfs-read-chunk-streams" in proc.stdout


def rclone_version() -> str | None:
    if shutil.which("rclone") is None:
        return None
    out = run(["rclone", "version"], check=False, timeout=30).stdout
    return out.splitlines()[0] if out else None


class WanLink:
    """Client and server namespaces joined by a veth pair: 50 ms RTT, 1 Gbit/s."""

    def __init__(self) -> None:
        self.name = f"dfb{os.getpid() % 100000}"
        self.cli = f"{self.name}-cli"
        self.srv = f"{self.name}-srv"
        self.method = "netem" if netem_available() else "nfqdelay"
        if self.method == "netem":
            self._key = CLEANUP.push("netem namespaces", self._down_netem)
            self._up_netem()
        else:
            self._key = CLEANUP.push("wan namespaces", self._down_tool)
            run([str(WAN_TOOL / "up"), self.name, str(WAN_DELAY_MS), WAN_RATE], timeout=300)

    def _up_netem(self) -> None:
        c, s = f"{self.name[:8]}c0", f"{self.name[:8]}s0"
        run(["ip", "netns", "add", self.cli])
        run(["ip", "netns", "add", self.srv])
        run(["ip", "link", "add", c, "netns", self.cli, "type", "veth", "peer", "name", s,
             "netns", self.srv])  # fmt: skip
        run(["ip", "-n", self.cli, "addr", "add", f"{CLIENT_ADDR}/30", "dev", c])
        run(["ip", "-n", self.srv, "addr", "add", f"{SERVER_ADDR}/30", "dev", s])
        for ns, dev in ((self.cli, c), (self.srv, s)):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem",
                 "delay", f"{WAN_DELAY_MS}ms", "rate", WAN_RATE, "limit", "100000"])  # fmt: skip

    def _down_netem(self) -> None:
        run(["ip", "netns", "del", self.cli], check=False)
        run(["ip", "netns", "del", self.srv], check=False)

    def _down_tool(self) -> None:
        run([str(WAN_TOOL / "down"), self.name], check=False)

    def close(self) -> None:
        CLEANUP.release(self._key)


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (tried in a scratch namespace)."""
    ns = f"dfbprobe{os.getpid() % 100000}"
    if run(["ip", "netns", "add", ns], check=False).returncode != 0:
        return False
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"], check=False)
        probe = ["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        return run(probe, check=False).returncode == 0
    finally:
        run(["ip", "netns", "del", ns], check=False)


class NetnsFederation:
    """``davfed testfed --host 169.254.77.2`` started inside the server namespace."""

    def __init__(self, data: Path, netns: str) -> None:
        cmd = in_netns(
            netns,
            [
                sys.executable, "-m", "davfed_testfed", str(data),
                "--port", "0", "--host", SERVER_ADDR, "--endpoints", "3",
                "--ready-json", "--watch-stdin",
            ],
        )  # fmt: skip
        self._key = CLEANUP.push("federation in the server namespace", self._stop)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise BenchError(f"federation in {netns} did not start: {err.strip()[-300:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]
        self.endpoints: list[dict[str, Any]] = self.info["endpoints"]
        self.access_logs = [Path(e["access_log"]) for e in self.endpoints]

    def replica_url(self, relpath: str, index: int = 0) -> str:
        return str(self.endpoints[index]["base_url"]) + relpath

    def bytes_sent(self) -> int:
        return log_bytes(self.access_logs)

    def bytes_sent_by(self, index: int) -> int:
        """What endpoint ``index`` has sent so far."""
        return log_bytes(self.access_logs[index : index + 1])

    def _stop(self) -> None:
        if getattr(self, "proc", None) is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        CLEANUP.release(self._key)


def curl(url: str, netns: str | None = None) -> dict[str, Any]:
    fmt = "%{size_download} %{time_connect} %{time_starttransfer} %{time_total}"
    cmd = in_netns(netns, ["curl", "-sS", "-f", "-o", "/dev/null", "-w", fmt, url])
    t0 = time.perf_counter()
    out = run(cmd, timeout=1800).stdout.split()
    seconds = time.perf_counter() - t0
    nbytes = int(out[0])
    return {
        "seconds": round(seconds, 4),
        "bytes": nbytes,
        "mb_s": round(nbytes / seconds / 1e6, 1),
        "connect_ms": round(float(out[1]) * 1000, 1),
        "ttfb_ms": round(float(out[2]) * 1000, 1),
    }
