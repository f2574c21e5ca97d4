"""The HTTPS front of the test federation: a real Apache httpd with mod_ssl.

Owns: :class:`ApacheFrontEnd`, one ``apache2`` of its own (generated
``httpd.conf``, pid file, ``error.log``, ``access.log``; no system config, no
systemd) started as ``apache2 -f CONF -DFOREGROUND`` with
``OPENSSL_ALLOW_PROXY_CERTS=1`` and ``PR_SET_PDEATHSIG``, listening on two
loopback ports. RFC 3820 proxies are accepted through ``mod_gridsite``
(``GridSiteGSIProxyLimit``; ``GridSiteAuth off``): OpenSSL 3 ignores
``OPENSSL_ALLOW_PROXY_CERTS`` and mod_ssl alone refuses any proxy ("proxy
certificates not allowed"), which is why production Dynafeds load gridsite.
The ports:

* the *require* port: ``SSLVerifyClient require`` as a production Dynafed; a
  client without a certificate fails in the TLS handshake;
* the *optional* port: ``SSLVerifyClient optional``, for bearer tokens (and
  anonymous clients, who are ``nobody``).

Both check client certificates against the hashed CA directory
(``SSLCACertificatePath``, ``SSLVerifyDepth 10``) and reverse-proxy everything
(``ProxyPass … nocanon``, no ``ProxyPassReverse``: ``Location`` passes unchanged;
PROPFIND passes) to the aiohttp front end. Identity travels in request headers:

* ``X-Testfed-Client-Cert``: base64 of ``SSL_CLIENT_CERT`` (PEM);
* ``X-Testfed-Client-Chain-0`` … ``-4``: base64 of ``SSL_CLIENT_CERT_CHAIN_n``;
* ``X-Testfed-Client-Verify``: ``SSL_CLIENT_VERIFY`` (``SUCCESS``, ``NONE``);
* ``Authorization`` passes through untouched.

The front end trusts them only with ``X-Testfed-Secret``: a random secret that
exists only in this config (mode 0600) and in the federation process; requests
without it get 403 there. Apache overwrites every ``X-Testfed-*`` header a
client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from davfed_testfed.storage import accepting, free_port, set_pdeathsig

MODULE_DIR = Path("/usr/lib/apache2/modules")
MODULES = (
    ("mpm_event_module", "mod_mpm_event.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("headers_module", "mod_headers.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_http_module", "mod_proxy_http.so"),
    ("ssl_module", "mod_ssl.so"),
    ("gridsite_module", "mod_gridsite.so"),
)
SECRET_HEADER = "X-Testfed-Secret"
CERT_HEADER = "X-Testfed-Client-Cert"
CHAIN_HEADER = "X-Testfed-Client-Chain-{}"
VERIFY_HEADER = "X-Testfed-Client-Verify"
CHAIN_DEPTH = 5
#: access.log: client, TLS version, SSL_CLIENT_VERIFY, "client DN", "request", status, bytes, µs
LOG_FORMAT = r"%h %{SSL_PROTOCOL}x %{SSL_CLIENT_VERIFY}x \"%{SSL_CLIENT_S_DN}x\" \"%r\" %>s %b %D"


class ApacheError(RuntimeError):
    """Apache is missing or would not start (the message has its last error line)."""


def find_apache() -> str:
    """The apache2 binary (``DAVFED_APACHE`` overrides).

    Raises:
        ApacheError: it, or mod_ssl/mod_proxy_http, is not installed.
    """
    binary = os.environ.get("DAVFED_APACHE") or shutil.which("apache2")
    if binary is None and Path("/usr/sbin/apache2").exists():
        binary = "/usr/sbin/apache2"
    if binary is None:
        raise ApacheError("apache2 not found (Debian package apache2)")
    missing = [so for _, so in MODULES if not (MODULE_DIR / so).exists()]
    if missing:
        raise ApacheError(f"Apache modules missing in {MODULE_DIR}: {', '.join(missing)}")
    return binary


@dataclass(frozen=True, slots=True)
class ApacheSite:
    work_dir: Path
    address: str
    require_port: int
    optional_port: int
    backend_port: int
    secret: str
    ca_dir: Path
    host_cert: Path
    host_key: Path
    as_root: bool


def _vhost(site: ApacheSite, port: int, verify: str) -> str:
    chain = "".join(
        f"    RequestHeader set {CHAIN_HEADER.format(n)}"
        f' "expr=%{{base64:%{{SSL_CLIENT_CERT_CHAIN_{n}}}}}"\n'
        for n in range(CHAIN_DEPTH)
    )
    return f"""
<VirtualHost {site.address}:{port}>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile {site.host_cert}
    SSLCertificateKeyFile {site.host_key}
    SSLCACertificatePath {site.ca_dir}
    SSLVerifyClient {verify}
    SSLVerifyDepth 10
    SSLOptions +StdEnvVars +ExportCertData +LegacyDNStringFormat
    ProxyRequests Off
    ProxyPreserveHost On
    ProxyAddHeaders Off
    AllowEncodedSlashes NoDecode
    ProxyPass / http://{site.address}:{site.backend_port}/ nocanon keepalive=On ttl=30
    RequestHeader set {SECRET_HEADER} "{site.secret}"
    RequestHeader set {VERIFY_HEADER} "%{{SSL_CLIENT_VERIFY}}s"
    RequestHeader set {CERT_HEADER} "expr=%{{base64:%{{SSL_CLIENT_CERT}}}}"
{chain}    <Location />
        GridSiteAuth off
        GridSiteEnvs on
        GridSiteGSIProxyLimit 9
        GridSiteIndexes off
        GridSiteHtmlFormat off
    </Location>
</VirtualHost>
"""


def render_config(site: ApacheSite) -> str:
    """The complete httpd.conf (nothing under /etc/apache2 is read)."""
    w = site.work_dir
    modules = "\n".join(f"LoadModule {name} {MODULE_DIR / so}" for name, so in MODULES)
    user = "User www-data\nGroup www-data\n" if site.as_root else ""
    return f"""# generated by davfed testfed; do not edit
ServerRoot {w}
ServerName localhost
{modules}
{user}PidFile {w}/apache2.pid
DefaultRuntimeDir {w}/run
Mutex file:{w}/run default
ErrorLog {w}/error.log
LogLevel warn ssl:info
LogFormat "{LOG_FORMAT}" testfed
CustomLog {w}/access.log testfed
StartServers 1
ServerLimit 2
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 8
MaxSpareThreads 64
ThreadLimit 32
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
Timeout 300
ProxyTimeout 3600
TraceEnable off
ServerTokens Prod
ServerSignature Off
SSLSessionCache none
GridSiteSessionsDir {w}/gridsite-sessions
SSLProtocol all -SSLv3 -TLSv1 -TLSv1.1
Listen {site.address}:{site.require_port} https
Listen {site.address}:{site.optional_port} https
{_vhost(site, site.require_port, "require")}
{_vhost(site, site.optional_port, "optional")}
"""


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Apache's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


class ApacheFrontEnd:
    """One Apache in front of the aiohttp front end on ``backend_port``."""

    def __init__(
        self,
        work_dir: Path,
        *,
        address: str,
        backend_port: int,
        secret: str,
        ca_dir: Path,
        host_cert: Path,
        host_key: Path,
        require_port: int = 0,
        optional_port: int = 0,
    ) -> None:
        self._binary = find_apache()
        self.work_dir = work_dir
        self._address = address
        self._backend_port = backend_port
        self._secret = secret
        self._ca_dir = ca_dir
        self._host_cert = host_cert
        self._host_key = host_key
        self.require_port = require_port
        self.optional_port = optional_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.work_dir / "httpd.conf"

    @property
    def error_log(self) -> Path:
        return self.work_dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.work_dir / "access.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _write_config(self) -> None:
        (self.work_dir / "run").mkdir(parents=True, exist_ok=True)
        site = ApacheSite(
            work_dir=self.work_dir,
            address=self._address,
            require_port=self.require_port,
            optional_port=self.optional_port,
            backend_port=self._backend_port,
            secret=self._secret,
            ca_dir=self._ca_dir,
            host_cert=self._host_cert,
            host_key=self._host_key,
            as_root=os.geteuid() == 0,
        )
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_config(site))

    def _error_tail(self) -> str:
        lines: list[str] = []
        for path in (self.work_dir / "stderr.log", self.error_log):
            with contextlib.suppress(OSError):
                lines += [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if "error" in x.lower() or "emerg" in x.lower()]
        return (errors or lines or ["exited at once"])[-1]

    async def start(self, timeout: float = 15.0) -> None:
        """Start Apache and wait until both ports accept connections.

        Raises:
            ApacheError: it exited, or did not listen within ``timeout`` seconds.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        pick_require, pick_optional = self.require_port == 0, self.optional_port == 0
        attempts = 5 if pick_require or pick_optional else 1
        for attempt in range(attempts):
            if pick_require:
                self.require_port = free_port(self._address)
            if pick_optional:
                self.optional_port = free_port(self._address)
            self._write_config()
            try:
                await self._launch(timeout)
                return
            except ApacheError as exc:  # a free port taken meanwhile: try others
                if "in use" not in str(exc) or attempt == attempts - 1:
                    raise

    async def _launch(self, timeout: float) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C",
            "OPENSSL_ALLOW_PROXY_CERTS": "1",
            "APACHE_RUN_DIR": str(self.work_dir / "run"),
            "APACHE_LOCK_DIR": str(self.work_dir / "run"),
            "APACHE_LOG_DIR": str(self.work_dir),
            "APACHE_PID_FILE": str(self.work_dir / "apache2.pid"),
            "APACHE_RUN_USER": "www-data",
            "APACHE_RUN_GROUP": "www-data",
        }
        with open(self.work_dir / "stderr.log", "wb") as stderr:
            self._proc = subprocess.Popen(
                [self._binary, "-f", str(self.conf), "-DFOREGROUND"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=env,
                cwd=self.work_dir,
                preexec_fn=set_pdeathsig,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                with contextlib.suppress(OSError):
                    if "Address already in use" in (self.work_dir / "stderr.log").read_text():
                        raise ApacheError(
                            f"apache2: port {self.require_port} or {self.optional_port} "
                            "is already in use"
                        )
                raise ApacheError(f"apache2 failed: {self._error_tail()}")
            if accepting(self._address, self.require_port) and accepting(
                self._address, self.optional_port
            ):
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise ApacheError(f"apache2 not listening after {timeout} s: {self._error_tail()}")
            await asyncio.sleep(0.05)

    def pids(self) -> list[int]:
        """The Apache parent and its worker processes now."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        return [self._proc.pid, *child_pids(self._proc.pid)]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop Apache and its workers (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        workers = child_pids(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # normally gone with their parent; never leave one behind
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "apache2":
                    os.kill(pid, signal.SIGKILL)
