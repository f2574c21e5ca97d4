"""One running test federation: start everything, serve until told to stop, stop everything.

Owns: :class:`Federation` (the endpoints, the health checker, the signed-URL
cache and the fault calls of the control API) and :func:`serve`, the whole
lifecycle in one ``try/finally``: the front end, the control API, the nginx
fault server and every endpoint are started, the ready document is handed to
``ready``, and on the stop event all of it is stopped again (nginx included)
and the work directory removed.

In HTTPS mode (``opts.https``) the aiohttp front end listens on a private port
and only answers requests carrying a per-run secret; Apache (``apache.py``)
listens on the public ports and adds that secret and the client's certificate
chain; ``auth.py`` turns those into an identity for the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from davfed_testfed.control import control_app
from davfed_testfed.faults import FaultError, make_fault
from davfed_testfed.frontend import FrontEnd, FrontEndConfig
from davfed_testfed.health import HealthChecker, order_endpoints
from davfed_testfed.nginx import NginxEndpoint, find_nginx
from davfed_testfed.options import FedOptions
from davfed_testfed.signing import Credentials
from davfed_testfed.storage import (
    Endpoint,
    EndpointInfo,
    FaultServer,
    SignedEndpoint,
    free_port,
    listen_socket,
)

if TYPE_CHECKING:
    from davfed_testfed.apache import ApacheFrontEnd
    from davfed_testfed.auth import Authenticator
    from davfed_testfed.pki import TestPKI

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The federation cannot start; the message names the problem in one line."""


class Federation:
    """The live state of a running federation, as the front end and control API see it."""

    def __init__(self, opts: FedOptions, endpoints: list[Endpoint], health: HealthChecker) -> None:
        self.opts = opts
        self.endpoints = endpoints
        self.health = health
        self._rng = random.Random(opts.seed)
        self._sign_cache: dict[tuple[int, str], tuple[str, float]] = {}
        self._info: dict[str, Any] = {}
        self.auth: Authenticator | None = None

    # --- what the front end needs -----------------------------------------------------------

    def locate(self, relpath: str, fresh: bool) -> list[str]:
        """Replica URLs of ``relpath`` in redirect order (online endpoints only).

        Signed URLs come from a cache kept ``sign_cache_ttl`` seconds, so they may be
        partly aged, as Dynafed's are; ``fresh`` signs new ones (metalink).
        """
        order = order_endpoints(self.opts.ranks, self.health.online, self.opts.shuffle, self._rng)
        now = time.time()
        urls = []
        for index in order:
            cached = None if fresh else self._sign_cache.get((index, relpath))
            if cached is not None and now - cached[1] <= self.opts.sign_cache_ttl:
                urls.append(cached[0])
                continue
            url = self._sign(index, relpath, now)
            if not fresh:
                self._sign_cache[(index, relpath)] = (url, now)
            urls.append(url)
        return urls

    def locate_checksum(self, relpath: str) -> list[str] | None:
        """Replica URLs of ``relpath`` on online ``candochecksum`` endpoints, best first.

        None if no endpoint is flagged (Dynafed: "No plugin can calculate a checksum").
        """
        flagged = self.opts.checksum_set
        if not flagged:
            return None
        order = order_endpoints(self.opts.ranks, self.health.online, self.opts.shuffle, self._rng)
        now = time.time()
        return [self._sign(i, relpath, now) for i in order if i in flagged]

    def _sign(self, index: int, relpath: str, now: float) -> str:
        endpoint = self.endpoints[index]
        validity = endpoint.faults.validity()
        if validity is None:
            validity = self.opts.signature_validity
        return endpoint.replica_url(relpath, now, validity)

    def _forget_signed(self, index: int) -> None:
        for key in [k for k in self._sign_cache if k[0] == index]:
            del self._sign_cache[key]

    # --- the control API --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._info

    def set_info(self, info: dict[str, Any]) -> None:
        self._info = info

    def endpoint_count(self) -> int:
        return len(self.endpoints)

    def state(self) -> dict[str, Any]:
        return {
            "health_rounds": self.health.rounds,
            "endpoints": [
                {
                    **e.info.to_json(),
                    "online": self.health.online[i],
                    "faults": [f.to_json() for f in e.faults.faults()],
                }
                for i, e in enumerate(self.endpoints)
            ],
        }

    async def add_fault(self, index: int, kind: str, params: dict[str, object]) -> None:
        fault = make_fault(kind, params)
        endpoint = self.endpoints[index]
        if fault.path is not None and not (self.opts.data_dir / fault.path).is_file():
            raise FaultError(f"no file {fault.path!r} in the federation")
        if fault.kind == "validity" and endpoint.info.kind == "dav":
            raise FaultError("validity applies to signed-URL endpoints only")
        endpoint.faults.add(fault)
        if fault.kind == "down":
            await endpoint.set_down(True)
        elif fault.kind == "validity":
            self._forget_signed(index)
        else:
            await endpoint.sync_faults()

    async def clear_faults(self, index: int | None) -> None:
        targets = range(len(self.endpoints)) if index is None else [index]
        for i in targets:
            endpoint = self.endpoints[i]
            was_down = endpoint.faults.has("down")
            had_validity = endpoint.faults.validity() is not None
            endpoint.faults.clear()
            await endpoint.sync_faults()
            if was_down:
                await endpoint.set_down(False)
            if had_validity:
                self._forget_signed(i)

    async def wait_health(self, index: int, online: bool, timeout: float) -> bool:
        return await self.health.wait_for(index, online, timeout)

    async def check_health(self) -> list[bool]:
        await self.health.check_once()
        return list(self.health.online)

    def replica_url(self, index: int, relpath: str) -> str:
        return self._sign(index, relpath, time.time())

    def bytes_sent(self, index: int) -> int:
        return self.endpoints[index].bytes_sent()

    def auth_rules(self) -> list[str] | None:
        return None if self.auth is None else self.auth.rules.lines()

    def set_auth_rules(self, lines: list[str]) -> None:
        """Replace the rules (raises ``RulesError``; ``FaultError`` without authorization)."""
        if self.auth is None:
            raise FaultError("authorization needs --https or --auth-rules")
        from davfed_testfed.auth import Rules

        self.auth.rules = Rules.parse(lines)


def _bind(port: int, what: str, address: str) -> Any:
    try:
        return listen_socket(port, address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{what} port {port} is already in use") from None
        raise StartupError(f"cannot listen on {address}:{port} for the {what}: {exc}") from None


def access_logger(path: Path) -> Any:
    """A middleware appending ``time client forwarded-for method path status`` per request
    (the client behind a proxy is in ``X-Forwarded-For``, which squid adds)."""
    out = path.open("a", buffering=1)

    @web.middleware
    async def log_request(request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            forwarded = request.headers.get("X-Forwarded-For", "-").replace(" ", "")
            out.write(
                f"{time.time():.3f} {request.remote} {forwarded} {request.method} "
                f"{request.raw_path} {status}\n"
            )

    return log_request


async def _start_app(app: web.Application, sock: Any) -> web.AppRunner:
    # Apache forwards client certificate chains in headers: allow large ones.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, max_field_size=1 << 16)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def _make_endpoints(
    opts: FedOptions, work_dir: Path, fault_server: FaultServer | None
) -> list[Endpoint]:
    creds = Credentials()
    endpoints: list[Endpoint] = []
    for index, kind in enumerate(opts.endpoint_kinds):
        ep_dir = work_dir / f"ep{index}"
        ep_dir.mkdir(parents=True, exist_ok=True)
        if kind == "dav":
            assert fault_server is not None
            endpoints.append(
                NginxEndpoint(
                    index,
                    opts.data_dir,
                    ep_dir,
                    fault_server,
                    index in opts.second_hop,
                    address=opts.endpoint_host(index),
                    checksums=index in opts.checksum_set,
                )
            )
        else:
            info = EndpointInfo(
                index,
                kind,
                free_port(opts.endpoint_host(index)),
                address=opts.endpoint_host(index),
                checksums=index in opts.checksum_set,
            )
            endpoints.append(SignedEndpoint(info, opts.data_dir, ep_dir, creds))
    return endpoints


def _make_auth(
    opts: FedOptions, work_dir: Path, secret: str
) -> tuple[Authenticator, TestPKI | None]:
    """The authenticator (and in HTTPS mode the PKI); imports ``cryptography`` only here."""
    try:
        from cryptography import x509

        from davfed_testfed.auth import Authenticator, Rules, RulesError
        from davfed_testfed.pki import PKIError, TestPKI
    except ImportError as exc:
        raise StartupError(
            f"authorization needs the cryptography package ({exc}); pip install 'davfed[test]'"
        ) from None
    try:
        rules = Rules.load(opts.auth_rules) if opts.auth_rules is not None else Rules()
        if not opts.https:
            return Authenticator(rules), None
        pki = TestPKI.open_or_create(opts.pki_dir or work_dir / "pki")
        voms = x509.load_pem_x509_certificate(pki.voms_cert.read_bytes())
        auth = Authenticator(rules, secret=secret, token_key=pki.token_key(), trusted_voms=[voms])
    except (RulesError, PKIError, OSError) as exc:
        raise StartupError(str(exc)) from None
    return auth, pki


async def _start_apache(
    opts: FedOptions, work_dir: Path, pki: TestPKI, backend_port: int, secret: str
) -> ApacheFrontEnd:
    from davfed_testfed.apache import ApacheError, ApacheFrontEnd

    try:
        apache = ApacheFrontEnd(
            work_dir / "apache",
            address=opts.host,
            backend_port=backend_port,
            secret=secret,
            ca_dir=pki.ca_dir,
            host_cert=pki.host_cert,
            host_key=pki.host_key,
            require_port=opts.port,
            optional_port=opts.optional_port,
        )
        await apache.start()
    except ApacheError as exc:
        raise StartupError(str(exc)) from None
    return apache


async def serve(
    opts: FedOptions,
    ready: Callable[[dict[str, Any]], None],
    stop: asyncio.Event,
) -> None:
    """Run the federation until ``stop`` is set; ``ready(info)`` once it serves.

    Raises:
        StartupError: a port is taken, nginx is missing or failed, DATA_DIR is unusable.
    """
    opts.check()
    if "dav" in opts.endpoint_kinds:
        find_nginx()
    if opts.https:
        from davfed_testfed.apache import ApacheError, find_apache

        try:
            find_apache()
        except ApacheError as exc:
            raise StartupError(str(exc)) from None
    # HTTPS mode: the aiohttp front end is Apache's private back end on any free port.
    front_sock = _bind(0 if opts.https else opts.port, "federation", opts.host)
    control_sock = None
    work_dir = opts.work_dir or Path(tempfile.mkdtemp(prefix="davfed-testfed-"))
    own_work_dir = opts.work_dir is None
    runners: list[web.AppRunner] = []
    endpoints: list[Endpoint] = []
    fault_server: FaultServer | None = None
    health: HealthChecker | None = None
    health_task: asyncio.Task[None] | None = None
    apache: ApacheFrontEnd | None = None
    secret = secrets.token_urlsafe(32)
    try:
        auth: Authenticator | None = None
        pki: TestPKI | None = None
        if opts.https or opts.auth_rules is not None:
            auth, pki = _make_auth(opts, work_dir, secret)
        control_sock = _bind(opts.control_port, "control", opts.host)
        if "dav" in opts.endpoint_kinds:
            fault_server = FaultServer(opts.data_dir)
            await fault_server.start()
        endpoints = _make_endpoints(opts, work_dir, fault_server)
        results = await asyncio.gather(*(e.start() for e in endpoints), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise StartupError(str(result)) from result
        health = HealthChecker(endpoints, opts.health_period, opts.max_latency)
        await health.check_once()
        federation = Federation(opts, endpoints, health)
        federation.auth = auth
        port = int(front_sock.getsockname()[1])
        front = FrontEnd(
            FrontEndConfig(
                data_dir=opts.data_dir,
                prefix=opts.url_prefix,
                host=f"{opts.host}:{port}",
                maxlistitems=opts.maxlistitems,
                no_replica_status=opts.no_replica_status,
                https=opts.https,
            ),
            federation.locate,
            auth,
            federation.locate_checksum,
        )
        app = front.app()
        if opts.access_log is not None:
            app.middlewares.append(access_logger(opts.access_log))
        runners.append(await _start_app(app, front_sock))
        url = f"http://{opts.host}:{port}{opts.url_prefix}/"
        https_info: dict[str, Any] | None = None
        if opts.https:
            assert pki is not None
            apache = await _start_apache(opts, work_dir, pki, port, secret)
            url = f"https://{opts.host}:{apache.require_port}{opts.url_prefix}/"
            https_info = {
                "url": url,
                "port": apache.require_port,
                "optional_url": f"https://{opts.host}:{apache.optional_port}{opts.url_prefix}/",
                "optional_port": apache.optional_port,
                "backend_url": f"http://{opts.host}:{port}{opts.url_prefix}/",
                "apache_pid": apache.pid,
                "apache_conf": str(apache.conf),
                "apache_error_log": str(apache.error_log),
                "apache_access_log": str(apache.access_log),
                "pki_dir": str(pki.root),
                "ca_dir": str(pki.ca_dir),
                "ca_cert": str(pki.ca_cert),
            }
        runners.append(await _start_app(control_app(federation), control_sock))
        health_task = asyncio.create_task(health.run())
        info = {
            "url": url,
            "port": apache.require_port if apache is not None else port,
            "prefix": opts.url_prefix,
            "control_url": f"http://{opts.host}:{control_sock.getsockname()[1]}/",
            "pid": os.getpid(),
            "data_dir": str(opts.data_dir.resolve()),
            "work_dir": str(work_dir),
            "endpoints": [e.info.to_json() for e in endpoints],
            "https": https_info,
            "auth_rules": federation.auth_rules(),
        }
        federation.set_info(info)
        ready(info)
        await stop.wait()
    finally:
        if health_task is not None:
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task
        if apache is not None:
            await apache.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        await asyncio.gather(*(e.stop() for e in endpoints), return_exceptions=True)
        if fault_server is not None:
            await fault_server.stop()
        if health is not None:
            await health.close()
        front_sock.close()
        if control_sock is not None:
            control_sock.close()
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
