"""The systemd unit ``davfed@.service`` that ``davfed install-helper`` writes.

Owns: the unit's text, with the absolute paths of this installation's Python and
of fusermount3 and mkdir filled in (systemd finds nothing on a PATH of its own
for a venv install), and the list of hardening settings it leaves out and why.
``systemd/davfed@.service`` in the repository is this text for ``/opt/davfed``
(a test checks it).
Must not import: pyfuse3, trio, httpx.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

UNIT_NAME = "davfed@.service"
#: What marks a unit as ours: ``--uninstall`` removes only such a file.
MARKER = "# Written by `davfed install-helper`"
#: Where a site puts one file per instance: DAVFED_URL= and DAVFED_OPTIONS=.
ENV_DIR = Path("/etc/davfed")
#: Seconds between two starts; with StartLimitIntervalSec=0 systemd never gives up.
RESTART_SEC = 15

#: Hardening the unit cannot use: each would give the service a mount namespace of its
#: own, and the FUSE mount made inside it would be invisible to every other process.
NAMESPACE_SETTINGS = (
    "ProtectSystem=",
    "ProtectHome=",
    "PrivateTmp=",
    "PrivateDevices=",
    "ProtectKernelModules=",
    "ProtectKernelLogs=",
    "ProtectControlGroups=",
    "ReadOnlyPaths=",
    "InaccessiblePaths=",
    "TemporaryFileSystem=",
    "BindPaths=",
    "MountFlags=",
)


def tool(name: str) -> str:
    """The absolute path of ``name`` here (``/usr/bin/NAME`` if it is not installed yet)."""
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") or f"/usr/bin/{name}"


def unit_text(python: str, *, fusermount: str | None = None, mkdir: str | None = None) -> str:
    """``davfed@.service`` running ``python -I -m davfed_fuse``; paths absolute."""
    fusermount = fusermount or tool("fusermount3")
    mkdir = mkdir or tool("mkdir")
    not_used = "\n".join(
        textwrap.wrap(" ".join(NAMESPACE_SETTINGS), 78, initial_indent="# ", subsequent_indent="# ")
    )
    exec_start = (
        f"{python} -I -m davfed_fuse mount -f"
        " -o cache_dir=${CACHE_DIRECTORY} -o ${DAVFED_OPTIONS} ${DAVFED_URL} %f"
    )
    return f"""\
{MARKER} for {python}:
# `davfed install-helper --uninstall` removes it. Manual: man 8 davfed.
#
# One mount per instance; the instance name is the escaped mountpoint:
#     systemd-escape --path /dynafed/belle      ->  dynafed-belle
# {ENV_DIR}/dynafed-belle.env holds the federation and the mount options:
#     DAVFED_URL=https://dynafed.example/belle
#     DAVFED_OPTIONS=allow_other,cache_size=50G,x509_proxy=/etc/davfed/x509up
# then: systemctl enable --now davfed@dynafed-belle.service
#
# Start-up: Type=notify; the daemon sends READY=1 once the federation answered and
# the mount is live (within mount_timeout, 60 s, below TimeoutStartSec). A
# federation that is down at boot makes the start fail (exit 32) and systemd starts
# it again every {RESTART_SEC} s for as long as it takes (StartLimitIntervalSec=0).
# A usage error (exit 1) is not retried.
#
# Hardening not used, because each gives the service a private mount namespace
# and the FUSE mount would be invisible outside it:
{not_used}
# Nor PrivateNetwork= (the federation is remote) or User= (a non-root mount needs
# fusermount3's setuid bit, which NoNewPrivileges= disables).

[Unit]
Description=davfed: Dynafed federation mounted read-only on %f
Documentation=man:davfed(8)
Wants=network-online.target
After=network-online.target
Before=remote-fs.target
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
Environment=DAVFED_OPTIONS=ro
EnvironmentFile={ENV_DIR}/%i.env
# A daemon that died leaves the mountpoint "Transport endpoint is not connected".
ExecStartPre=-{fusermount} -uz %f
ExecStartPre={mkdir} -p %f
ExecStart={exec_start}
# Unmount first (the daemon then leaves its loop); a busy mount: SIGTERM unmounts.
ExecStop=-{fusermount} -u %f
KillMode=mixed
TimeoutStartSec=90
TimeoutStopSec=30
Restart=on-failure
RestartSec={RESTART_SEC}
RestartPreventExitStatus=1
UMask=0077
CacheDirectory=davfed
CacheDirectoryMode=0700
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=remote-fs.target
"""
