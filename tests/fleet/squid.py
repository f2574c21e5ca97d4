"""A real squid (Debian's) for tests: its own config, cache and logs, on a port of its own.

The configuration is the one ``docs/site-cache.md`` explains (:func:`site_config`);
tests read squid's access log (:meth:`Squid.entries`) to see what came from its cache.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SQUID = shutil.which("squid") or "/usr/sbin/squid"
STOREID_HELPER = "/usr/lib/squid/storeid_file_rewrite"

#: The Store-ID rule of docs/site-cache.md: every replica of /epN/PATH of a signed
#: S3 URL (any endpoint, any signature) is one cache entry keyed by PATH.
STOREID_RULES = (
    r"^http://[^/]+/ep[0-9]+/([^?]*)\?(.*&)?X-Amz-(Signature|Credential)=.*"
    "\thttp://federation.squid.internal/$1\n"
)


def available() -> bool:
    return Path(SQUID).exists() and Path(STOREID_HELPER).exists()


def site_config(
    work: Path, *, listen: str, port: int, clients: list[str], data_hosts: list[str]
) -> str:
    """squid.conf for a federation site cache (docs/site-cache.md explains each line)."""
    return f"""\
http_port {listen}:{port}
pid_filename {work}/squid.pid
cache_log {work}/cache.log
logformat davfed %ts.%03tu %>a %Ss %>Hs %<st %rm %ru
access_log stdio:{work}/access.log davfed
cache_store_log none
coredump_dir {work}
cache_effective_user proxy
shutdown_lifetime 0 seconds

cache_mem 64 MB
maximum_object_size_in_memory 8 MB
cache_dir ufs {work}/cache 2048 16 256
maximum_object_size 4 GB

acl site_vms src {" ".join(clients)}
acl federation_data dst {" ".join(data_hosts)}
acl Safe_ports port 1-65535
http_access deny !site_vms
http_access allow site_vms federation_data
http_access deny all

range_offset_limit none federation_data
quick_abort_min -1 KB
collapsed_forwarding on

store_id_program {STOREID_HELPER} {work}/storeid.rules
store_id_children 4 startup=1 idle=1 concurrency=0
acl signed_data urlpath_regex -i X-Amz-Signature=
store_id_access allow federation_data signed_data
store_id_access deny all

refresh_pattern -i ^http://federation\\.squid\\.internal/ 1440 100% 10080
refresh_pattern -i /ep[0-9]+/ 1440 100% 10080
refresh_pattern . 0 20% 4320
via off
forwarded_for on
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the access log."""

    time: float
    client: str
    result: str  # TCP_MISS, TCP_HIT, TCP_MEM_HIT, ...
    status: int
    bytes: int  # sent to the client, headers included
    method: str
    url: str

    @property
    def hit(self) -> bool:
        # REFRESH_UNMODIFIED: revalidated with the origin (a 304), the body from the cache.
        return "HIT" in self.result or "REFRESH_UNMODIFIED" in self.result


class Squid:
    """squid -N on ``listen:port`` with :func:`site_config`, its files in ``work``."""

    def __init__(
        self, work: Path, *, listen: str, port: int, clients: list[str], data_hosts: list[str]
    ) -> None:
        self.work, self.listen, self.port = work, listen, port
        work.mkdir(parents=True, exist_ok=True)
        (work / "storeid.rules").write_text(STOREID_RULES)
        self.conf = work / "squid.conf"
        self.conf.write_text(
            site_config(work, listen=listen, port=port, clients=clients, data_hosts=data_hosts)
        )
        proxy = pwd.getpwnam("proxy")
        for path in (work, work / "storeid.rules", self.conf):
            os.chown(path, proxy.pw_uid, proxy.pw_gid)
        subprocess.run(
            [SQUID, "-z", "-N", "-f", str(self.conf)], check=True, timeout=60, capture_output=True
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    def start(self) -> None:
        (self.work / "squid.pid").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((self.listen, self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.work / "cache.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"squid did not start:\n{log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: squid dies mid-transfer, as a crashed cache does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        # its helpers (store-ID) are children that exit when squid's pipes close
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def entries(self) -> list[Entry]:
        path = self.work / "access.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 7:
                continue
            out.append(
                Entry(
                    float(parts[0]),
                    parts[1],
                    parts[2],
                    int(parts[3]),
                    int(parts[4]),
                    parts[5],
                    parts[6],
                )
            )
        return out
