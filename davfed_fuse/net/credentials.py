"""Grid credentials: which one a mount uses, whether it is safe and valid, and how it is sent.

Owns: credential discovery (the order of issue 7 and the WLCG bearer token
discovery spec), the mount-time checks (owner, mode, expiry), the TLS context
that presents an X.509 proxy or certificate, and the bearer token header.
Credentials are files renewed behind our back (cron, credmon, htgettoken):
:class:`Credentials` re-reads a file whenever its mtime or size changes, so a
renewal takes effect without a remount. A renewed X.509 credential gets a new
TLS context and a new generation (:class:`TLSGeneration`), and the connection
pools then open new connections for it: a kept-alive connection stays
authenticated as whoever made its handshake.
Must not import: pyfuse3, httpx, trio, the namespace, the cache. Never logs a secret.

Discovery order:

1. explicit options: ``x509_proxy=``, ``x509_cert=``/``x509_key=``, ``token_file=``;
2. WLCG bearer token discovery: ``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``,
   ``$XDG_RUNTIME_DIR/bt_u<euid>``, ``/tmp/bt_u<euid>``;
3. ``X509_USER_PROXY``, then ``/tmp/x509up_u<euid>``;
4. ``X509_USER_CERT``/``X509_USER_KEY``.

CAs: ``capath=`` or ``X509_CERT_DIR`` (default ``/etc/grid-security/certificates``)
when that directory exists, plus the system's bundle.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from davfed_fuse.errors import Forbidden, MountError

log = logging.getLogger(__name__)

DEFAULT_CERT_DIR = Path("/etc/grid-security/certificates")


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential and where it was found (``source`` is for messages, never a secret)."""

    kind: str  # "x509" | "token"
    source: str
    path: Path | None = None  # the proxy, certificate or token file
    key: Path | None = None  # the key, when apart from the certificate
    value: str | None = None  # a token given in the environment (BEARER_TOKEN)


def discover(
    *,
    x509_proxy: Path | None = None,
    x509_cert: Path | None = None,
    x509_key: Path | None = None,
    token_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> Credential | None:
    """The credential a mount uses, in the documented order; None if there is none."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if x509_proxy is not None:
        return Credential("x509", "x509_proxy=", x509_proxy)
    if x509_cert is not None:
        return Credential("x509", "x509_cert=", x509_cert, x509_key or x509_cert)
    if token_file is not None:
        return Credential("token", "token_file=", token_file)
    token = env.get("BEARER_TOKEN", "").strip()
    if token:
        return Credential("token", "BEARER_TOKEN", value=token)
    candidates: list[tuple[str, Path]] = []
    if env.get("BEARER_TOKEN_FILE"):
        candidates.append(("BEARER_TOKEN_FILE", Path(env["BEARER_TOKEN_FILE"])))
    if env.get("XDG_RUNTIME_DIR"):
        runtime = Path(env["XDG_RUNTIME_DIR"]) / f"bt_u{euid}"
        candidates.append(("$XDG_RUNTIME_DIR/bt_u<euid>", runtime))
    candidates.append(("/tmp/bt_u<euid>", Path(f"/tmp/bt_u{euid}")))
    for source, path in candidates:
        if path.is_file():
            return Credential("token", source, path)
    if env.get("X509_USER_PROXY"):
        return Credential("x509", "X509_USER_PROXY", Path(env["X509_USER_PROXY"]))
    default_proxy = Path(f"/tmp/x509up_u{euid}")
    if default_proxy.is_file():
        return Credential("x509", "/tmp/x509up_u<euid>", default_proxy)
    if env.get("X509_USER_CERT"):
        cert = Path(env["X509_USER_CERT"])
        key = Path(env.get("X509_USER_KEY") or cert)
        return Credential("x509", "X509_USER_CERT", cert, key)
    return None


def searched(euid: int | None = None) -> str:
    """Where :func:`discover` looks, for the message of a mount that found nothing."""
    euid = os.geteuid() if euid is None else euid
    return (
        "x509_proxy=, x509_cert=, token_file=, BEARER_TOKEN, BEARER_TOKEN_FILE, "
        f"$XDG_RUNTIME_DIR/bt_u{euid}, /tmp/bt_u{euid}, X509_USER_PROXY, "
        f"/tmp/x509up_u{euid}, X509_USER_CERT"
    )


def ca_dir(capath: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The hashed CA directory to trust besides the system bundle, if it exists."""
    env = os.environ if env is None else env
    chosen = capath or Path(env.get("X509_CERT_DIR") or DEFAULT_CERT_DIR)
    if capath is not None and not capath.is_dir():
        raise MountError(f"capath {capath} is not a directory")
    return chosen if chosen.is_dir() else None


def check_private(path: Path, what: str, *, euid: int | None = None) -> None:
    """Refuse a secret file that others can read or that is not ours (davfs2's rule)."""
    euid = os.geteuid() if euid is None else euid
    try:
        info = path.stat()
    except OSError as exc:
        raise MountError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MountError(f"{what} {path} is not a regular file")
    if info.st_uid != euid:
        raise MountError(f"{what} {path} is owned by uid {info.st_uid}, not by uid {euid}")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise MountError(
            f"{what} {path} has mode {mode:04o}: group and others must have no access "
            f"(chmod 600 {path})"
        )


def not_after(path: Path) -> dt.datetime:
    """When the first (end-entity or proxy) certificate in a PEM file expires, in UTC."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise MountError(f"{path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise MountError(f"{path} holds no readable PEM certificate ({exc})") from None
    return cert.not_valid_after_utc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def tls_context(cas: Path | None, credential: Credential | None = None) -> ssl.SSLContext:
    """A client TLS context: the system bundle plus ``cas``, presenting ``credential`` if X.509."""
    context = ssl.create_default_context()
    if cas is not None:
        context.load_verify_locations(capath=str(cas))
    if credential is not None and credential.kind == "x509" and credential.path is not None:
        context.load_cert_chain(str(credential.path), str(credential.key or credential.path))
    return context


class Credentials:
    """The mount's credential at run time: TLS settings and headers, kept current.

    ``check()`` runs the mount-time checks (raising :class:`MountError`);
    ``before_request()`` runs before each request to the federation: it reloads
    a renewed file and raises :class:`Forbidden` (EACCES) while an X.509
    credential is expired, logging that once per expiry. ``refresh()`` only
    reloads. Each reload of an X.509 credential makes a new ``ssl_context`` and
    adds one to ``generation``.
    """

    def __init__(
        self, credential: Credential | None, ssl_context: ssl.SSLContext, cas: Path | None = None
    ) -> None:
        self.credential = credential
        self.ssl_context = ssl_context
        self.generation = 0
        self._cas = cas
        self._stamp: tuple[int, int] | None = None
        self._failed_stamp: tuple[int, int] | None = None
        self._token: str | None = credential.value if credential else None
        self._expires: dt.datetime | None = None
        self._warned_expired = False

    @classmethod
    def create(
        cls,
        credential: Credential | None,
        capath: Path | None,
        env: Mapping[str, str] | None = None,
    ) -> Credentials:
        cas = ca_dir(capath, env)
        return cls(credential, tls_context(cas), cas)

    def describe(self) -> str:
        """Where the credential came from, for logs and ``davfed status`` (no secrets)."""
        cred = self.credential
        if cred is None:
            return "no credential"
        where = f" ({cred.path})" if cred.path else ""
        expiry = f", valid until {self._expires:%Y-%m-%d %H:%M:%S} UTC" if self._expires else ""
        return f"{cred.kind} from {cred.source}{where}{expiry}"

    def check(self) -> None:
        """Mount-time checks: the files are private and ours, and a proxy is not expired."""
        cred = self.credential
        if cred is None:
            return
        if cred.kind == "token":
            if cred.path is not None:
                check_private(cred.path, "token file")
        elif cred.key is None or cred.key == cred.path:
            assert cred.path is not None
            check_private(cred.path, "X.509 proxy" if cred.key is None else "X.509 key")
        else:
            check_private(cred.key, "X.509 key")
        self._reload(force=True)
        if self._expires is not None and self._expires <= _now():
            raise MountError(
                f"the X.509 credential {cred.path} expired at {self._expires:%Y-%m-%d %H:%M:%S} UTC"
            )

    def headers(self) -> dict[str, str]:
        """Headers for the federation (and only the federation): a bearer token, if any."""
        self.before_request()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def before_request(self) -> None:
        if self.credential is None:
            return
        self._reload()
        if self._expires is not None and self._expires <= _now():
            if not self._warned_expired:
                log.error(
                    "the X.509 credential %s expired at %s UTC; reads fail with EACCES "
                    "until it is renewed",
                    self.credential.path,
                    f"{self._expires:%Y-%m-%d %H:%M:%S}",
                )
                self._warned_expired = True
            raise Forbidden(f"X.509 credential expired at {self._expires:%Y-%m-%d %H:%M} UTC")

    def refresh(self) -> None:
        """Reload the credential file if it changed; never raises."""
        if self.credential is not None:
            self._reload()

    def _reload(self, *, force: bool = False) -> None:
        """Read the credential file again if it changed (renewed by cron or credmon).

        A file that cannot be used (half written, say) leaves the previous
        credential in force, with one warning per version of the file.
        """
        cred = self.credential
        if cred is None or cred.path is None:
            return
        try:
            info = cred.path.stat()
        except OSError as exc:
            if force:
                raise MountError(f"{cred.path}: {exc.strerror}") from None
            stamp = (-1, exc.errno or 0)
            if stamp != self._failed_stamp:
                log.warning("cannot read the credential %s: %s", cred.path, exc.strerror)
                self._failed_stamp = stamp
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp and not force:
            return
        try:
            if cred.kind == "token":
                self._token = cred.path.read_text().strip() or None
            else:
                expires = not_after(cred.path)
                self.ssl_context = tls_context(self._cas, cred)
                self._expires = expires
                self.generation += 1
        except (OSError, ssl.SSLError, MountError) as exc:
            if force:
                raise MountError(f"cannot use the credential {cred.path}: {exc}") from None
            if stamp != self._failed_stamp:
                log.warning("cannot reload the credential %s: %s", cred.path, exc)
                self._failed_stamp = stamp
            return
        if self._stamp is not None:
            log.info("reloaded the renewed credential: %s", self.describe())
        self._stamp = stamp
        self._failed_stamp = None
        self._warned_expired = False


class TLSGeneration:
    """Which credential a kept-alive connection speaks as, for pools to compare.

    TLS authenticates a connection once, in its handshake. A pool notes the
    :meth:`current` generation when it makes a connection, and reuses the
    connection only while :meth:`is_current` says that generation is still in
    force: after a renewal (another proxy, new VOMS attributes, an expired proxy
    replaced) new requests get new connections. Both connection pools use this:
    the ranged-GET transport and the httpx client (``net.httpclient``).
    """

    def __init__(self, credentials: Credentials | None = None) -> None:
        self._credentials = credentials
        self._default: ssl.SSLContext | None = None

    def current(self) -> tuple[int, ssl.SSLContext]:
        """The generation and TLS context new connections get (a renewed file reloaded)."""
        if self._credentials is None:
            if self._default is None:
                self._default = ssl.create_default_context()
            return 0, self._default
        self._credentials.refresh()
        return self._credentials.generation, self._credentials.ssl_context

    def is_current(self, generation: int) -> bool:
        """Whether a connection made with ``generation`` may be reused."""
        return self._credentials is None or generation == self._credentials.generation

    @property
    def renews(self) -> bool:
        """Whether connections can go stale: the credential is an X.509 one."""
        cred = self._credentials.credential if self._credentials is not None else None
        return cred is not None and cred.kind == "x509"
