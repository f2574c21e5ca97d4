"""The Python handle on a test federation running in its own process.

Owns: :class:`TestFederation`: it starts ``python -m davfed_testfed … --ready-json
--watch-stdin``, reads the JSON ready line, talks to the control API, and always
stops the process (SIGTERM, then SIGKILL after a grace period). Because the
child also stops when its stdin closes, it cannot outlive the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

if TYPE_CHECKING:
    from davfed_testfed.pki import TestPKI


class TestFedError(RuntimeError):
    """The federation would not start, or a control call failed."""

    __test__ = False  # not a pytest test class, despite its name


@dataclass(frozen=True, slots=True)
class EndpointHandle:
    """One storage endpoint of a running federation."""

    index: int
    name: str  # "ep0"
    kind: str  # "dav" | "s3v2" | "s3v4" | "azure"
    port: int
    base_url: str  # "http://127.0.0.1:P/ep0/"; a file's replica is base_url + its path
    access_log: Path | None  # nginx's access log (first field: body bytes sent)
    disk_port: int | None  # second hop: the disk node's port
    candochecksum: bool = False  # answers Want-Digest with a Digest header


class TestFederation:
    """A Dynafed-compatible federation over ``data_dir``, in a child process.

    ``with TestFederation(data_dir) as fed: ...`` or ``fed = TestFederation(...).start()``
    and ``fed.stop()``. See the package docstring for every option and method.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        endpoints: int = 3,
        kinds: Sequence[str] | None = None,
        prefix: str = "/myfed",
        port: int = 0,
        health_period: float = 0.2,
        max_latency: float = 0.5,
        maxlistitems: int = 10000,
        no_replica_status: int = 404,
        second_hop: bool | Sequence[int] = False,
        geo_rank: Sequence[int] | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        signature_validity: int = 3600,
        sign_cache_ttl: float = 600.0,
        startup_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
        https: bool = False,
        pki: TestPKI | str | os.PathLike[str] | None = None,
        auth_rules: Sequence[str] | str | os.PathLike[str] | None = None,
        optional_port: int = 0,
        checksum_endpoints: Sequence[int] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.https = https
        self._pki_arg = pki
        self._rules_arg = auth_rules
        self._own_dirs: list[Path] = []
        self.pki: TestPKI | None = None
        args = [
            str(self.data_dir),
            "--port", str(port),
            "--endpoints", str(endpoints),
            "--prefix", prefix,
            "--health-period", str(health_period),
            "--max-latency", str(max_latency),
            "--maxlistitems", str(maxlistitems),
            "--no-replica-status", str(no_replica_status),
            "--signature-validity", str(signature_validity),
            "--sign-cache-ttl", str(sign_cache_ttl),
        ]  # fmt: skip
        if kinds:
            args += ["--kinds", ",".join(kinds)]
        if second_hop is True:
            args += ["--second-hop", "all"]
        elif second_hop:
            args += ["--second-hop", ",".join(str(i) for i in second_hop)]
        if checksum_endpoints is not None:
            indices = ",".join(str(i) for i in checksum_endpoints)
            args += ["--checksum-endpoints", indices or "none"]
        if geo_rank:
            args += ["--geo-rank", ",".join(str(r) for r in geo_rank)]
        if shuffle:
            args.append("--shuffle")
        if seed is not None:
            args += ["--seed", str(seed)]
        if https:
            args.append("--https")
            if optional_port:
                args += ["--optional-port", str(optional_port)]
        self._args = [*args, *extra_args, "--ready-json", "--watch-stdin"]
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_path: Path | None = None
        self._client: httpx.Client | None = None
        self.info: dict[str, Any] = {}
        self.startup_seconds = 0.0

    # --- lifecycle --------------------------------------------------------------------------

    def _auth_args(self) -> list[str]:
        """``--pki-dir``/``--auth-rules``; makes the PKI and rules file if they are ours."""
        args: list[str] = []
        if self.https:
            from davfed_testfed.pki import TestPKI

            if self._pki_arg is None:
                root = Path(tempfile.mkdtemp(prefix="davfed-testfed-pki-"))
                self._own_dirs.append(root)
                self.pki = TestPKI.create(root)
            elif isinstance(self._pki_arg, TestPKI):
                self.pki = self._pki_arg
            else:
                self.pki = TestPKI.open_or_create(self._pki_arg)
            args += ["--pki-dir", str(self.pki.root)]
        rules = self._rules_arg
        if isinstance(rules, list | tuple):
            rules_dir = Path(tempfile.mkdtemp(prefix="davfed-testfed-rules-"))
            self._own_dirs.append(rules_dir)
            (rules_dir / "rules").write_text("".join(f"{line}\n" for line in rules))
            args += ["--auth-rules", str(rules_dir / "rules")]
        elif isinstance(rules, str | os.PathLike):
            args += ["--auth-rules", os.fspath(rules)]
        elif rules is not None:
            raise TypeError("auth_rules: a list of lines or the path of a rules file")
        return args

    def start(self) -> Self:
        """Start the federation process and wait for its ready line."""
        try:
            auth_args = self._auth_args()
        except BaseException:
            self._remove_own_dirs()
            raise
        fd, stderr_name = tempfile.mkstemp(prefix="davfed-testfed-", suffix=".log")
        self._stderr_path = Path(stderr_name)
        started = time.monotonic()
        with os.fdopen(fd, "wb") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "davfed_testfed", *self._args, *auth_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        try:
            line = self._read_ready_line()
            self.info = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._client = httpx.Client(base_url=self.control_url, timeout=60.0)
        return self

    def _read_ready_line(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        stdout = self._proc.stdout
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TestFedError(f"test federation not ready after {self._startup_timeout} s")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    self._proc.wait(timeout=5)
                    raise TestFedError(
                        f"test federation exited with {self._proc.returncode}: {self.stderr_tail()}"
                    )
                buffer += chunk
        return buffer.split(b"\n", 1)[0]

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the federation process wrote to stderr."""
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        return "\n".join(self._stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the federation (idempotent); returns its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is None:
            self._remove_own_dirs()
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr_path is not None:
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None
        self._remove_own_dirs()
        return proc.returncode

    def _remove_own_dirs(self) -> None:
        for path in self._own_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._own_dirs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # --- what the federation is -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/myfed/`` (HTTPS mode: Apache's require port, ``https://``)."""
        return str(self.info["url"])

    # --- HTTPS mode -------------------------------------------------------------------------

    def _https(self, key: str) -> Any:
        https = self.info.get("https")
        if not https:
            raise TestFedError("the federation is not in HTTPS mode (https=True)")
        return https[key]

    @property
    def require_url(self) -> str:
        """``https://127.0.0.1:P/myfed/``: Apache with ``SSLVerifyClient require`` (= url)."""
        return str(self._https("url"))

    @property
    def optional_url(self) -> str:
        """``https://127.0.0.1:Q/myfed/``: ``SSLVerifyClient optional`` (tokens, anonymous)."""
        return str(self._https("optional_url"))

    @property
    def backend_url(self) -> str:
        """The aiohttp front end behind Apache (refuses requests that bypass Apache: 403)."""
        return str(self._https("backend_url"))

    @property
    def apache_pid(self) -> int:
        return int(self._https("apache_pid"))

    def apache_pids(self) -> list[int]:
        """Apache's parent and worker processes alive now (empty once stopped)."""
        from davfed_testfed.apache import child_pids

        pid = self.apache_pid
        alive = [pid] if Path(f"/proc/{pid}").exists() else []
        return alive + child_pids(pid) if alive else []

    @property
    def apache_error_log(self) -> Path:
        return Path(self._https("apache_error_log"))

    @property
    def apache_access_log(self) -> Path:
        """One line per request: client, TLS version, SSL_CLIENT_VERIFY, "DN", "request", …"""
        return Path(self._https("apache_access_log"))

    def auth_rules(self) -> list[str] | None:
        """The authorization rules in force (None: no authorization configured)."""
        rules = self._call("GET", "/auth-rules").json()["rules"]
        return None if rules is None else [str(x) for x in rules]

    def set_auth_rules(self, lines: Sequence[str]) -> None:
        """Replace the rules now (``[]``: allow everything); raises TestFedError if bad."""
        self._call("PUT", "/auth-rules", json={"rules": list(lines)})

    def authorization_requests(self, endpoint_index: int) -> int:
        """Requests that reached a ``dav`` endpoint with an ``Authorization`` header.

        From nginx's access log (its ``auth=1`` field; the header is never logged).
        """
        endpoint = self.endpoints[endpoint_index]
        if endpoint.access_log is None:
            raise TestFedError(f"{endpoint.name} ({endpoint.kind}) keeps no access log")
        count = 0
        for log in (endpoint.access_log, endpoint.access_log.with_name("head-access.log")):
            with contextlib.suppress(FileNotFoundError):
                count += sum(
                    1
                    for line in log.read_text(errors="replace").splitlines()
                    if line.rstrip().endswith(" auth=1")
                )
        return count

    def saw_authorization(self, endpoint_index: int) -> bool:
        """Whether any request to that ``dav`` endpoint carried ``Authorization``."""
        return self.authorization_requests(endpoint_index) > 0

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def control_url(self) -> str:
        return str(self.info["control_url"])

    @property
    def work_dir(self) -> Path:
        return Path(self.info["work_dir"])

    @property
    def endpoints(self) -> list[EndpointHandle]:
        return [
            EndpointHandle(
                index=e["index"],
                name=e["name"],
                kind=e["kind"],
                port=e["port"],
                base_url=e["base_url"],
                access_log=Path(e["access_log"]) if e["access_log"] else None,
                disk_port=e["disk_port"],
                candochecksum=bool(e.get("candochecksum", False)),
            )
            for e in self.info["endpoints"]
        ]

    def file_url(self, relpath: str) -> str:
        """The federation URL of ``relpath`` (percent-encoded)."""
        from urllib.parse import quote

        return self.url + quote(relpath.lstrip("/"))

    # --- control calls ----------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            raise TestFedError("the test federation is not running")
        response = self._client.request(method, path, **kwargs)
        if response.status_code == 400:
            raise TestFedError(response.json().get("error", response.text))
        return response

    def replica_url(self, relpath: str, endpoint_index: int) -> str:
        """A URL of ``relpath`` on that endpoint that a client could GET now (signed if needed)."""
        params = {"endpoint": endpoint_index, "path": relpath}
        return str(self._call("GET", "/replica-url", params=params).json()["url"])

    def fault(self, endpoint_index: int, kind: str, **params: object) -> None:
        """Inject a fault; it is in effect when this returns (see ``faults.py`` for kinds)."""
        self._call("POST", "/faults", json={"endpoint": endpoint_index, "kind": kind, **params})

    def clear_faults(self, endpoint_index: int | None = None) -> None:
        """Clear the faults of one endpoint, or of all (down endpoints come back up)."""
        params = {} if endpoint_index is None else {"endpoint": endpoint_index}
        self._call("DELETE", "/faults", params=params)

    def wait_health(self, endpoint_index: int, online: bool, timeout: float = 5.0) -> None:
        """Wait until the health checker records the endpoint as ``online``.

        Raises:
            TestFedError: it did not within ``timeout`` seconds.
        """
        params = {"endpoint": endpoint_index, "online": str(online).lower(), "timeout": timeout}
        response = self._call("GET", "/health/wait", params=params)
        if response.status_code != 200:
            raise TestFedError(
                f"endpoint {endpoint_index} not {'online' if online else 'offline'} "
                f"after {timeout} s"
            )

    def check_health(self) -> list[bool]:
        """Run one health-checker round now (besides the periodic ones); the online flags."""
        return [bool(x) for x in self._call("POST", "/health/check").json()["online"]]

    def state(self) -> dict[str, Any]:
        """Health and faults of every endpoint."""
        result: dict[str, Any] = self._call("GET", "/state").json()
        return result

    def online(self) -> list[bool]:
        return [bool(e["online"]) for e in self.state()["endpoints"]]

    def bytes_sent(self, endpoint_index: int) -> int:
        """Body bytes that endpoint has served for completed requests (nginx: its access log)."""
        params = {"endpoint": endpoint_index}
        return int(self._call("GET", "/bytes-sent", params=params).json()["bytes"])

    # --- async variants (for trio or asyncio tests; they do not block the event loop) -------

    async def _acall(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.control_url, timeout=60.0) as client:
            response = await client.request(method, path, **kwargs)
        if response.status_code == 400:
            raise TestFedError(response.json().get("error", response.text))
        return response

    async def afault(self, endpoint_index: int, kind: str, **params: object) -> None:
        await self._acall(
            "POST", "/faults", json={"endpoint": endpoint_index, "kind": kind, **params}
        )

    async def aclear_faults(self, endpoint_index: int | None = None) -> None:
        params = {} if endpoint_index is None else {"endpoint": endpoint_index}
        await self._acall("DELETE", "/faults", params=params)

    async def await_health(self, endpoint_index: int, online: bool, timeout: float = 5.0) -> None:
        params = {"endpoint": endpoint_index, "online": str(online).lower(), "timeout": timeout}
        response = await self._acall("GET", "/health/wait", params=params)
        if response.status_code != 200:
            raise TestFedError(f"endpoint {endpoint_index} did not flip within {timeout} s")
