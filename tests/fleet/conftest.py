"""Fixtures of the fleet tests: a real squid with the site-cache configuration."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fleet.squid import Squid


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_squid() -> Iterator[Callable[..., Squid]]:
    """``make_squid(listen=, clients=, data_hosts=)``: a started squid, stopped after the test.

    Its files live in a directory under /tmp that squid's own user (proxy) can
    enter (pytest's tmp_path is 0700 root).
    """
    started: list[Squid] = []
    dirs: list[Path] = []

    def make(
        *, listen: str = "127.0.0.1", clients: list[str], data_hosts: list[str], port: int = 0
    ) -> Squid:
        work = Path(tempfile.mkdtemp(prefix="davfed-squid-"))
        work.chmod(0o755)
        dirs.append(work)
        squid = Squid(
            work / "squid",
            listen=listen,
            port=port or free_port(listen),
            clients=clients,
            data_hosts=data_hosts,
        )
        squid.start()
        started.append(squid)
        return squid

    yield make
    for squid in started:
        squid.stop()
    for work in dirs:
        shutil.rmtree(work, ignore_errors=True)
