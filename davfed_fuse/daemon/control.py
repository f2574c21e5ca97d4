"""The control socket's server side: who may ask, and the commands it answers.

Owns: :func:`serve_control` (a Unix stream socket, mode 0600, owned by the daemon's
user; each peer's uid is checked with ``SO_PEERCRED``: root and that user only),
and :data:`COMMANDS`, the table of ``davfed ctl`` commands (one :class:`Command`
per line: add one there). ``davfed status`` is the command ``status``.
Must not import: pyfuse3. The protocol is :mod:`davfed_fuse.system.control`'s.

A bad request gets ``{"ok": false, "error": ...}`` and changes nothing: every
argument is parsed before anything is applied.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from davfed_fuse.daemon.status import MountView
from davfed_fuse.optionvalues import parse_log_level, parse_proxy
from davfed_fuse.redaction import redact_url
from davfed_fuse.system.control import MAX_LINE

log = logging.getLogger(__name__)

#: Seconds a client has to send its request line.
REQUEST_TIMEOUT = 5.0


class Refused(Exception):
    """A bad command or argument: one line for the user, nothing changed."""


@dataclass
class Controls:
    """What the commands act on: the mount's view and the steering the daemon allows."""

    view: MountView
    set_proxy: Callable[[str], Awaitable[None]]  # switches to a validated list


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple[str, ...]
    args: tuple[str, ...]
    help: str
    run: Callable[[Controls, list[str]], Awaitable[Any]]

    @property
    def usage(self) -> str:
        return " ".join((*self.words, *self.args))


async def _status(controls: Controls, _args: list[str]) -> Any:
    return controls.view.status()


async def _log_level(controls: Controls, args: list[str]) -> Any:
    try:
        level = parse_log_level(args[0])
    except ValueError as exc:
        raise Refused(f"log-level {args[0]!r}: {exc}") from None
    root = logging.getLogger()
    previous = logging.getLevelName(root.level)
    root.setLevel(level)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(quiet)
    log.warning("log level set to %s (was %s) by davfed ctl", level, previous)
    return {"previous": previous, "level": level}


async def _forget(controls: Controls, args: list[str]) -> Any:
    path = args[0].strip("/")
    if not path or "\0" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise Refused(f"forget {args[0]!r}: expected a file's path inside the mount")
    federation = controls.view.federation
    target = federation.target(path)
    federation.forget_target(path)
    log.info("forgot the replica of /%s by davfed ctl", path)
    return {"path": "/" + path, "forgot": None if target is None else redact_url(target)}


async def _proxy_info(controls: Controls, _args: list[str]) -> Any:
    return controls.view.proxy.info()


async def _proxy_set(controls: Controls, args: list[str]) -> Any:
    try:
        spec = parse_proxy(args[0])
    except ValueError as exc:
        raise Refused(f"proxy set: {exc}") from None
    await controls.set_proxy(spec)
    return controls.view.proxy.info()


async def _help(_controls: Controls, _args: list[str]) -> Any:
    return [{"usage": c.usage, "help": c.help} for c in COMMANDS]


#: Every command, matched by its words then its number of arguments.
COMMANDS = (
    Command(("status",), (), "the status document (davfed status)", _status),
    Command(("help",), (), "the commands", _help),
    Command(("log-level",), ("LEVEL",), "debug, info, warning, error or critical", _log_level),
    Command(("forget",), ("PATH",), "ask the federation again at the next read of PATH", _forget),
    Command(("proxy", "info"), (), "the proxy list, its order and the proxy in use", _proxy_info),
    Command(
        ("proxy", "set"),
        ("LIST",),
        "use LIST (CVMFS syntax: a|b;c;DIRECT) from now on, if one of it works",
        _proxy_set,
    ),
)


def find_command(words: list[str]) -> tuple[Command, list[str]]:
    """The command ``words`` name and its arguments; Refused with one line if none."""
    for command in sorted(COMMANDS, key=lambda c: -len(c.words)):
        n = len(command.words)
        if tuple(words[:n]) == command.words:
            args = words[n:]
            if len(args) != len(command.args):
                raise Refused(f"usage: {command.usage}")
            return command, args
    known = ", ".join(sorted({c.words[0] for c in COMMANDS}))
    what = " ".join(words) if words else "nothing"
    raise Refused(f"unknown command {what!r} (commands: {known})")


def peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def answer(controls: Controls, line: bytes) -> dict[str, Any]:
    """The answer to one request line."""
    try:
        request = json.loads(line)
        words = request["command"] if isinstance(request, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise Refused('malformed request: expected {"command": [WORD, ...]}')
        command, args = find_command(words)
        return {"ok": True, "result": await command.run(controls, args)}
    except (ValueError, KeyError):
        return {"ok": False, "error": 'malformed request: expected {"command": [WORD, ...]}'}
    except Refused as exc:
        return {"ok": False, "error": str(exc)}


async def _serve_one(controls: Controls, conn: trio.socket.SocketType, owner: int) -> None:
    with conn:
        try:
            data = b""
            with trio.move_on_after(REQUEST_TIMEOUT):
                while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                    chunk = await conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            if not data.endswith(b"\n"):
                return
            uid = peer_uid(conn)  # the request is read first: the refusal reaches the peer
            if uid not in (0, owner):
                reply: dict[str, Any] = {
                    "ok": False,
                    "denied": True,
                    "error": f"permission denied: uid {uid} may not control this mount "
                    f"(only root and uid {owner})",
                }
            else:
                reply = await answer(controls, data)
            await conn.send(json.dumps(reply, default=str).encode() + b"\n")
        except OSError as exc:
            log.debug("control connection failed: %s", exc)
        except Exception:  # a command's bug must never take the mount down
            log.exception("control command failed")


def prepare_directory(path: Path) -> None:
    """Make the socket's directory (0755, or 0700 if it is a user's) and clear a stale socket."""
    directory = path.parent
    directory.mkdir(mode=0o755 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # a dead daemon's, or one stacked below us: ours now
    except FileNotFoundError:
        pass


async def serve_control(
    controls: Controls,
    path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer on ``path`` until cancelled; the socket file is removed at the end."""
    owner = os.geteuid()
    prepare_directory(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        await listener.bind(str(path))
        inode = path.stat().st_ino
        try:
            os.chmod(path, 0o600)
            listener.listen(16)
            log.info("control socket %s", path)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(_serve_one, controls, conn, owner)
        finally:
            try:
                if path.stat().st_ino == inode:  # not a later daemon's
                    path.unlink()
            except OSError:
                pass
