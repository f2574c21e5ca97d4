"""The control socket of a mount: where it is, and the client side of its protocol.

Owns: :func:`socket_path` (one Unix socket per mount, derived from the mountpoint
and the uid of the user who mounted it: ``/run/davfed/<escaped mountpoint>.sock``
for root, ``$XDG_RUNTIME_DIR``-style ``/run/user/<uid>/davfed/`` for others),
:func:`locate` (mountpoint -> socket, from mountinfo only: never a ``stat`` of the
mount, which would hang on a stopped daemon) and :func:`request` (one JSON line
out, one JSON line back, within a deadline).
Must not import: trio, httpx, pyfuse3 (the CLI uses it; so does the daemon).

Protocol: the client sends ``{"command": ["status"]}`` (or ``["ctl", WORD, ...]``)
and a newline; the daemon answers ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "one line"}`` and a newline, then closes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from davfed_fuse.system.mounttable import find_mount, read_mountinfo

#: Seconds a client waits for the daemon, in all.
DEADLINE = 2.0
#: The longest request or answer line accepted.
MAX_LINE = 1 << 20
#: sun_path holds 108 bytes with its NUL.
_SUN_PATH = 107

_PLAIN = re.compile(rb"[A-Za-z0-9_.:]")


class ControlError(Exception):
    """The mount could not be asked; ``code`` is the exit status (``Exit.FAILED``: 2)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def socket_dir(uid: int) -> Path:
    """Where the control sockets of ``uid``'s mounts live."""
    if uid == 0:
        return Path("/run/davfed")
    return Path(f"/run/user/{uid}/davfed")


def escape(mountpoint: str) -> str:
    """systemd-escape --path: ``/dynafed/belle`` -> ``dynafed-belle``."""
    raw = os.fsencode(mountpoint.strip("/")) or b"-"
    out = []
    for i, byte in enumerate(raw):
        char = bytes([byte])
        if char == b"/":
            out.append("-")
        elif _PLAIN.match(char) and not (i == 0 and char == b"."):
            out.append(char.decode())
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def socket_path(mountpoint: str, uid: int) -> Path:
    """The control socket of the mount on ``mountpoint`` (absolute, as mountinfo has it)."""
    directory = socket_dir(uid)
    name = escape(mountpoint)
    path = directory / f"{name}.sock"
    if len(os.fsencode(str(path))) > _SUN_PATH:
        digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
        path = directory / f"{name[:40]}-{digest}.sock"
    return path


def _mount_uid(super_options: str) -> int:
    for item in super_options.split(","):
        if item.startswith("user_id="):
            return int(item.partition("=")[2])
    return 0


def locate(mountpoint: str) -> Path:
    """The control socket of the davfed mount on ``mountpoint``.

    ControlError (exit 2) if nothing, or something else than davfed, is mounted there.
    Only the mountpoint's parent is resolved (symlinks), never the mount itself.
    """
    absolute = os.path.abspath(mountpoint)
    entries = read_mountinfo()
    entry = find_mount(absolute, entries, resolve=False)
    if entry is None:
        parent, name = os.path.split(absolute)
        entry = find_mount(os.path.join(os.path.realpath(parent), name), entries, resolve=False)
    if entry is None:
        raise ControlError(f"{mountpoint}: not a mountpoint (nothing is mounted there)")
    if not entry.is_davfed:
        raise ControlError(f"{mountpoint}: not a davfed mount (it is {entry.fstype})")
    return socket_path(entry.mountpoint, _mount_uid(entry.super_options))


def request(path: Path, command: list[str], *, deadline: float = DEADLINE) -> Any:
    """Send ``command`` to the daemon at ``path``; its result.

    ControlError: code 2 when the daemon cannot be reached or does not answer in
    time, code 1 when it refused the command (a bad command or argument).
    """
    end = time.monotonic() + deadline

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.settimeout(left())
            sock.connect(str(path))
            sock.settimeout(left())
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                sock.settimeout(left())
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_LINE:
                    raise ControlError(f"{path}: answer too long")
        except TimeoutError:
            raise ControlError(
                f"the daemon does not answer on {path} within {deadline:g} s (stopped, or busy)"
            ) from None
        except FileNotFoundError:
            raise ControlError(f"no control socket {path}: is the daemon running?") from None
        except ConnectionRefusedError:
            raise ControlError(f"nobody listens on {path}: the daemon is gone") from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: only root and the user who mounted it may ask"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot talk to the daemon on {path}: {exc.strerror}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon on {path} sent no answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the daemon on {path} sent a malformed answer")
    if not answer.get("ok"):
        error = str(answer.get("error", "refused"))
        code = 2 if answer.get("denied") else 1
        raise ControlError(error, code)
    return answer.get("result")
