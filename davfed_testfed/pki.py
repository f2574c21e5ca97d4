"""A throw-away grid PKI for the HTTPS mode of the test federation.

Owns: :class:`TestPKI`, everything a grid client and the federation's Apache need,
generated at run time into one directory (nothing here is ever committed):

* a test CA and a hashed CA directory like ``/etc/grid-security/certificates``
  (``certificates/``: ``testca.pem``, ``<hash>.0`` made by ``openssl rehash``,
  ``<hash>.signing_policy`` and ``<hash>.namespaces`` for the Globus tools);
* a host certificate for ``localhost`` / ``127.0.0.1`` (SAN DNS and IP);
* a fake VOMS server certificate (``voms/``) and ``vomsdir/belle/voms.test.lsc``;
* user certificates with distinct DNs (``users/<name>/usercert.pem``, ``userkey.pem``);
* RFC 3820 proxies made by the real grid tools: ``grid-proxy-init``
  (globus-proxy-utils) for plain proxies, ``voms-proxy-fake`` (voms-clients) for
  proxies with a VOMS attribute certificate, and expired ones (``-pastproxy``);
* WLCG-style bearer tokens: JWTs signed HS256 with a key in ``tokens/token.key``,
  claims ``iss``, ``sub``, ``aud``, ``scope``, ``wlcg.ver``, ``wlcg.groups``,
  ``iat``, ``nbf``, ``exp``.

``TestPKI.create(root)`` makes a new one; ``TestPKI.open(root)`` reads one back
(the federation process does that with ``--pki-dir``). Proxies are made on first
use and cached as files; ``python -m davfed_testfed.pki DIR`` makes a PKI with
every default proxy and token and prints its manifest.

Uses the ``cryptography`` package (the ``test`` extra), the ``openssl`` command,
and for proxies ``grid-proxy-init`` and ``voms-proxy-fake``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from davfed_testfed.tokens import make_jwt

#: The VO that ``voms-proxy-fake`` proxies belong to, and the fake VOMS server's identity.
VO = "belle"
VOMS_HOST = "voms.test"
VOMS_PORT = 15000
TOKEN_ISSUER = "https://127.0.0.1/davfed-testfed-issuer"
TOKEN_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"

CA_DN = "/DC=org/DC=test/CN=davfed testfed CA"
HOST_DN = "/DC=org/DC=test/CN=localhost"
VOMS_DN = f"/DC=org/DC=test/CN={VOMS_HOST}"


@dataclass(frozen=True, slots=True)
class User:
    """One test user: its certificate DN and the FQANs its default VOMS proxy carries."""

    name: str
    dn: str
    fqans: tuple[str, ...]  # empty: the default proxy is a plain grid-proxy-init one
    groups: tuple[str, ...]  # the ``wlcg.groups`` of its default token


#: alice and bob are in the VO (alice also in /belle/production); mallory is in no group.
DEFAULT_USERS: tuple[User, ...] = (
    User(
        "alice",
        "/DC=org/DC=test/CN=Alice",
        ("/belle/Role=NULL/Capability=NULL", "/belle/production/Role=NULL/Capability=NULL"),
        ("/belle", "/belle/production"),
    ),
    User("bob", "/DC=org/DC=test/CN=Bob", ("/belle/Role=NULL/Capability=NULL",), ("/belle",)),
    User("mallory", "/DC=org/DC=test/CN=Mallory", (), ()),
)


class PKIError(RuntimeError):
    """A PKI file or grid tool is missing or failed (the message says which)."""


# --- names ------------------------------------------------------------------------------------

_ATTRS = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
}
_SHORT = {oid.dotted_string: short for short, oid in _ATTRS.items()}


def name_from_dn(dn: str) -> x509.Name:
    """``/DC=org/DC=test/CN=Alice`` (OpenSSL's one-line form) as an X.509 name."""
    attrs = []
    for part in dn.strip("/").split("/"):
        key, sep, value = part.partition("=")
        if not sep or key not in _ATTRS:
            raise ValueError(f"unsupported DN component {part!r} in {dn!r}")
        attrs.append(x509.NameAttribute(_ATTRS[key], value))
    return x509.Name(attrs)


def dn_of(name: x509.Name) -> str:
    """An X.509 name in OpenSSL's one-line form (``/DC=org/DC=test/CN=Alice``), as grid
    software (gridsite, lcgdm-dav, Dynafed's rules) writes DNs."""
    parts = []
    for rdn in name.rdns:
        parts.append(
            "+".join(
                f"{_SHORT.get(a.oid.dotted_string, a.oid.dotted_string)}={a.value!s}" for a in rdn
            )
        )
    return "".join("/" + p for p in parts)


# --- certificates -----------------------------------------------------------------------------


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _issue(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    days: int = 365,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = name_from_dn(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        # digitalSignature: the key signs the proxies; keyEncipherment for old TLS suites.
        usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
        purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            purposes.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    builder = builder.add_extension(usage, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = {
            "grid-proxy-init": "globus-proxy-utils",
            "voms-proxy-fake": "voms-clients",
            "openssl": "openssl",
        }.get(name, name)
        raise PKIError(f"{name} not found (Debian package {package})")
    return path


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PKIError(
            f"{Path(argv[0]).name} failed ({result.returncode}): {detail[-1] if detail else ''}"
        )
    return result.stdout


# --- the PKI ----------------------------------------------------------------------------------


class TestPKI:
    """A test CA with host, VOMS and user certificates, proxies and tokens under ``root``.

    Paths: :attr:`ca_dir` (hashed, for ``X509_CERT_DIR``/``--capath``), :attr:`ca_cert`
    (for ``--cacert``), :attr:`host_cert`/:attr:`host_key`, :attr:`vomsdir`,
    :meth:`user_cert`/:meth:`user_key`, :meth:`proxy`, :meth:`token`/:meth:`token_file`.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, root: Path, users: Sequence[User]) -> None:
        self.root = root
        self.users = {u.name: u for u in users}

    # --- layout ---------------------------------------------------------------------------

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_dir(self) -> Path:
        """The hashed CA directory (``X509_CERT_DIR``, ``SSLCACertificatePath``, ``--capath``)."""
        return self.root / "certificates"

    @property
    def vomsdir(self) -> Path:
        """``X509_VOMS_DIR``: ``belle/voms.test.lsc`` names the fake VOMS server."""
        return self.root / "vomsdir"

    @property
    def host_cert(self) -> Path:
        return self.root / "host" / "hostcert.pem"

    @property
    def host_key(self) -> Path:
        return self.root / "host" / "hostkey.pem"

    @property
    def voms_cert(self) -> Path:
        return self.root / "voms" / "vomscert.pem"

    @property
    def voms_key(self) -> Path:
        return self.root / "voms" / "vomskey.pem"

    @property
    def token_key_file(self) -> Path:
        return self.root / "tokens" / "token.key"

    def token_key(self) -> bytes:
        """The HS256 key that signs (and verifies) test tokens."""
        return bytes.fromhex(self.token_key_file.read_text().strip())

    def user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise PKIError(f"no test user {name!r} (known: {', '.join(self.users)})") from None

    def user_cert(self, name: str) -> Path:
        self.user(name)
        return self.root / "users" / name / "usercert.pem"

    def user_key(self, name: str) -> Path:
        self.user(name)
        return self.root / "users" / name / "userkey.pem"

    def dn(self, name: str) -> str:
        return self.user(name).dn

    def env(self) -> dict[str, str]:
        """``X509_CERT_DIR`` and ``X509_VOMS_DIR`` for grid clients of this PKI."""
        return {"X509_CERT_DIR": str(self.ca_dir), "X509_VOMS_DIR": str(self.vomsdir)}

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | os.PathLike[str], users: Sequence[User] = DEFAULT_USERS) -> TestPKI:
        """Generate a new CA, hashed CA dir, host/VOMS/user certificates and a token key."""
        pki = cls(Path(root), users)
        pki.root.mkdir(parents=True, exist_ok=True)
        os.chmod(pki.root, 0o755)
        ca_key = _new_key()
        ca = _issue(CA_DN, ca_key, None, ca_key, ca=True, days=3650)
        _write_key(pki.ca_key, ca_key)
        _write_cert(pki.ca_cert, ca)
        pki._hash_dir(ca)
        for path_cert, path_key, dn, server in (
            (pki.host_cert, pki.host_key, HOST_DN, True),
            (pki.voms_cert, pki.voms_key, VOMS_DN, True),
        ):
            key = _new_key()
            _write_key(path_key, key)
            _write_cert(path_cert, _issue(dn, key, ca, ca_key, server=server))
        lsc = pki.vomsdir / VO / f"{VOMS_HOST}.lsc"
        lsc.parent.mkdir(parents=True, exist_ok=True)
        lsc.write_text(f"{VOMS_DN}\n{CA_DN}\n")
        for user in users:
            key = _new_key()
            _write_key(pki.user_key(user.name), key)
            _write_cert(pki.user_cert(user.name), _issue(user.dn, key, ca, ca_key))
        pki.token_key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(pki.token_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        (pki.root / "proxies").mkdir(exist_ok=True)
        manifest = {"users": [[u.name, u.dn, list(u.fqans), list(u.groups)] for u in users]}
        (pki.root / "pki.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return pki

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> TestPKI:
        """A PKI made earlier by :meth:`create`."""
        manifest_path = Path(root) / "pki.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise PKIError(f"no test PKI in {root} ({exc})") from None
        users = [User(n, dn, tuple(f), tuple(g)) for n, dn, f, g in manifest["users"]]
        return cls(Path(root), users)

    @classmethod
    def open_or_create(cls, root: str | os.PathLike[str]) -> TestPKI:
        if (Path(root) / "pki.json").exists():
            return cls.open(root)
        return cls.create(root)

    def _hash_dir(self, ca: x509.Certificate) -> None:
        self.ca_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_cert, self.ca_dir / "testca.pem")
        _run([_tool("openssl"), "rehash", str(self.ca_dir)])
        subject_hash = _run(
            [_tool("openssl"), "x509", "-hash", "-noout", "-in", str(self.ca_cert)]
        ).strip()
        if not (self.ca_dir / f"{subject_hash}.0").exists():
            raise PKIError(f"openssl rehash made no {subject_hash}.0 in {self.ca_dir}")
        (self.ca_dir / f"{subject_hash}.signing_policy").write_text(
            f"access_id_CA   X509   '{CA_DN}'\n"
            "pos_rights     globus CA:sign\n"
            "cond_subjects  globus '\"/DC=org/DC=test/*\"'\n"
        )
        (self.ca_dir / f"{subject_hash}.namespaces").write_text(
            f'TO Issuer "{CA_DN}" \\\n  PERMIT Subject "/DC=org/DC=test/.*"\n'
        )

    # --- proxies --------------------------------------------------------------------------

    def proxy(
        self,
        name: str,
        *,
        voms: bool | None = None,
        fqans: Sequence[str] | None = None,
        hours: int = 12,
        seconds: int | None = None,
        expired: bool = False,
        out: str | os.PathLike[str] | None = None,
    ) -> Path:
        """An RFC 3820 proxy of user ``name`` (certificate chain and key in one 0600 file).

        ``voms`` (default: the user has FQANs, or ``fqans`` is given) makes it with
        ``voms-proxy-fake`` carrying ``fqans`` (default: the user's); otherwise it is a
        plain ``grid-proxy-init -rfc`` proxy, valid ``hours``. ``seconds`` makes one
        that expires that many seconds from now, and ``expired`` one whose validity
        ended an hour ago; both come from ``voms-proxy-fake -pastproxy`` (with FQANs
        only if ``voms``). Without ``out`` the file is ``proxies/<name>-<kind>.pem``
        (kind ``plain``, ``voms``, ``expired-plain``, ``expired-voms``), made once,
        then reused; with ``out`` it is made anew and renamed over ``out``
        atomically (a renewal, as cron would do).
        """
        user = self.user(name)
        chosen = tuple(fqans) if fqans is not None else user.fqans
        use_voms = bool(chosen) if voms is None else voms
        if use_voms and not chosen:
            raise PKIError(f"a VOMS proxy of {name} needs fqans")
        past = 0
        if expired:  # valid for one hour, starting two hours ago
            hours, past = 1, 7200
        elif seconds is not None:
            if seconds <= 0:
                raise PKIError("seconds must be positive (expired=True for an expired proxy)")
            hours = max(1, -(-seconds // 3600))
            past = hours * 3600 - seconds
        kind = ("expired-" if expired else "") + ("voms" if use_voms else "plain")
        cached = out is None and fqans is None and hours == 12 and seconds is None
        cached = cached or (out is None and fqans is None and expired)
        path = Path(out) if out is not None else self.root / "proxies" / f"{name}-{kind}.pem"
        if out is None and not cached:
            path = self.root / "proxies" / f"{name}-{kind}-{secrets.token_hex(4)}.pem"
        if cached and path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made beside the target, then renamed over it: a reader never sees half a proxy.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if use_voms or past:
                self._voms_proxy(user, chosen if use_voms else (), hours, past, tmp)
            else:
                self._grid_proxy(user, hours, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _grid_proxy(self, user: User, hours: int, path: Path) -> None:
        _run(
            [
                _tool("grid-proxy-init"),
                "-q",
                "-rfc",
                "-bits", "2048",
                "-valid", f"{hours}:00",
                "-cert", str(self.user_cert(user.name)),
                "-key", str(self.user_key(user.name)),
                "-certdir", str(self.ca_dir),
                "-out", str(path),
            ],
            env=self.env(),
        )  # fmt: skip

    def _voms_proxy(
        self, user: User, fqans: Sequence[str], hours: int, past: int, path: Path
    ) -> None:
        argv = [
            _tool("voms-proxy-fake"),
            "-q",
            "-rfc",
            "-bits", "2048",
            "-cert", str(self.user_cert(user.name)),
            "-key", str(self.user_key(user.name)),
            "-certdir", str(self.ca_dir),
            "-hostcert", str(self.voms_cert),
            "-hostkey", str(self.voms_key),
            "-voms", VO,
            "-uri", f"{VOMS_HOST}:{VOMS_PORT}",
            "-out", str(path),
        ]  # fmt: skip
        for fqan in fqans:
            argv += ["-fqan", fqan]
        argv += ["-hours", str(hours), "-vomslife", str(hours)]
        if past:  # the validity starts that many seconds ago
            argv += ["-pastproxy", str(past), "-pastac", str(past)]
        _run(argv, env=self.env())

    # --- tokens ---------------------------------------------------------------------------

    def token(
        self,
        name: str,
        *,
        groups: Sequence[str] | None = None,
        lifetime: float = 3600.0,
        expired: bool = False,
        scope: str = "storage.read:/",
        key: bytes | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A WLCG-style JWT for user ``name`` (``sub``), groups default to the user's.

        ``expired`` gives one whose ``exp`` passed a minute ago; ``key`` signs with
        another key (a token the federation must refuse).
        """
        user = self.user(name)
        now = int(time.time())
        exp = now - 60 if expired else now + int(lifetime)
        claims: dict[str, Any] = {
            "wlcg.ver": "1.0",
            "iss": TOKEN_ISSUER,
            "sub": user.name,
            "aud": TOKEN_AUDIENCE,
            "scope": scope,
            "wlcg.groups": list(user.groups if groups is None else groups),
            "iat": now,
            "nbf": min(now, exp) - 1,
            "exp": exp,
            "jti": secrets.token_hex(8),
            **(extra_claims or {}),
        }
        return make_jwt(claims, self.token_key() if key is None else key)

    def token_file(
        self, name: str, *, out: str | os.PathLike[str] | None = None, **options: Any
    ) -> Path:
        """:meth:`token` written to a 0600 file (``tokens/<name>.jwt`` unless ``out``)."""
        path = Path(out) if out is not None else self.root / "tokens" / f"{name}.jwt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token(name, **options) + "\n")
            os.replace(tmp, path)  # atomically, as htgettoken/credmon renew tokens
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def make_all(self) -> dict[str, Any]:
        """Make every default proxy and token file; a manifest of all paths."""
        users: dict[str, Any] = {}
        for user in self.users.values():
            entry: dict[str, Any] = {
                "dn": user.dn,
                "cert": str(self.user_cert(user.name)),
                "key": str(self.user_key(user.name)),
                "proxy": str(self.proxy(user.name, voms=False)),
                "expired_proxy": str(self.proxy(user.name, expired=True)),
                "token_file": str(self.token_file(user.name)),
                "fqans": list(user.fqans),
                "groups": list(user.groups),
            }
            if user.fqans:
                entry["voms_proxy"] = str(self.proxy(user.name))
            users[user.name] = entry
        return {
            "root": str(self.root),
            "ca_dir": str(self.ca_dir),
            "ca_cert": str(self.ca_cert),
            "vomsdir": str(self.vomsdir),
            "host_cert": str(self.host_cert),
            "users": users,
        }


def main(argv: Sequence[str]) -> int:
    """``python -m davfed_testfed.pki DIR``: make a test PKI, print its manifest."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m davfed_testfed.pki DIR", file=sys.stderr)
        return 1
    try:
        pki = TestPKI.open_or_create(argv[0])
        print(json.dumps(pki.make_all(), indent=2))
    except PKIError as exc:
        print(f"testfed pki: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
