"""Credential discovery, mount-time checks and reloading (files made here, no network)."""

from __future__ import annotations

import datetime as dt
import errno
import os
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from davfed_fuse.errors import Forbidden, MountError, UpstreamError, UpstreamTimeout
from davfed_fuse.net.credentials import Credentials, TLSGeneration, check_private, discover
from davfed_fuse.net.httpclient import CredentialTransport, translate


def write_cert(path: Path, *, hours: float) -> dt.datetime:
    """A self-signed certificate + key in one PEM file (like a proxy file), mode 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = now + dt.timedelta(hours=hours)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(expires)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return expires


def test_discovery_order(tmp_path: Path) -> None:
    token = tmp_path / "bt"
    token.write_text("tok\n")
    proxy = tmp_path / "x509up"
    proxy.write_text("")
    env = {
        "BEARER_TOKEN_FILE": str(token),
        "X509_USER_PROXY": str(proxy),
        "X509_USER_CERT": "/c.pem",
    }
    assert discover(x509_proxy=proxy, env=env, euid=12345).source == "x509_proxy="  # type: ignore[union-attr]
    assert discover(token_file=token, env=env, euid=12345).source == "token_file="  # type: ignore[union-attr]
    assert discover(env={"BEARER_TOKEN": " t ", **env}, euid=12345).value == "t"  # type: ignore[union-attr]
    assert discover(env=env, euid=12345).source == "BEARER_TOKEN_FILE"  # type: ignore[union-attr]
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "bt_u12345").write_text("t2")
    found = discover(
        env={"XDG_RUNTIME_DIR": str(runtime), "X509_USER_PROXY": str(proxy)}, euid=12345
    )
    assert found is not None and found.path == runtime / "bt_u12345"
    found = discover(env={"X509_USER_PROXY": str(proxy)}, euid=12345)
    assert found is not None and found.kind == "x509" and found.path == proxy
    found = discover(env={"X509_USER_CERT": "/c.pem", "X509_USER_KEY": "/k.pem"}, euid=12345)
    assert found is not None and (found.path, found.key) == (Path("/c.pem"), Path("/k.pem"))
    assert discover(env={}, euid=12345) is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_readable_secret_is_refused(tmp_path: Path, mode: int) -> None:
    secret = tmp_path / "token"
    secret.write_text("t")
    secret.chmod(mode)
    with pytest.raises(MountError, match=f"mode {mode:04o}.*chmod 600"):
        check_private(secret, "token file")


def test_a_secret_of_another_user_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("t")
    secret.chmod(0o600)
    check_private(secret, "token file")
    with pytest.raises(MountError, match="owned by uid"):
        check_private(secret, "token file", euid=os.geteuid() + 1)


def test_an_expired_proxy_is_refused_at_mount_time_with_its_expiry(tmp_path: Path) -> None:
    proxy = tmp_path / "x509up"
    expires = write_cert(proxy, hours=-1)
    creds = Credentials.create(discover(x509_proxy=proxy), None, env={})
    with pytest.raises(MountError, match=f"expired at {expires:%Y-%m-%d %H:%M:%S} UTC"):
        creds.check()


def test_a_proxy_that_expires_while_mounted_gives_eacces_until_renewed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tmp_path / "x509up"
    write_cert(proxy, hours=1)
    creds = Credentials.create(discover(x509_proxy=proxy), None, env={})
    creds.check()
    assert creds.headers() == {}
    write_cert(proxy, hours=-1)
    os.utime(proxy, ns=(1, 10**18))  # a different mtime, as a renewal would leave
    for _ in range(3):
        with pytest.raises(Forbidden, match="expired"):
            creds.before_request()
    assert sum("expired" in r.message for r in caplog.records) == 1, "one clear log line"
    write_cert(proxy, hours=12)
    creds.before_request()
    assert "valid until" in creds.describe()


def test_a_renewed_token_is_picked_up(tmp_path: Path) -> None:
    token = tmp_path / "bt"
    token.write_text("first\n")
    token.chmod(0o600)
    creds = Credentials.create(discover(token_file=token), None, env={})
    creds.check()
    assert creds.headers() == {"Authorization": "Bearer first"}
    token.write_text("second-token\n")
    assert creds.headers() == {"Authorization": "Bearer second-token"}
    assert "second" not in creds.describe() and "first" not in creds.describe()


def test_no_secret_in_the_description(tmp_path: Path) -> None:
    creds = Credentials.create(discover(env={"BEARER_TOKEN": "s3cr3t"}), None, env={})
    assert "s3cr3t" not in creds.describe()
    assert creds.headers() == {"Authorization": "Bearer s3cr3t"}


def test_a_renewed_proxy_gets_a_new_tls_context(tmp_path: Path) -> None:
    proxy = tmp_path / "x509up"
    write_cert(proxy, hours=1)
    creds = Credentials.create(discover(x509_proxy=proxy), None, env={})
    creds.check()
    first, generation = creds.ssl_context, creds.generation
    creds.refresh()
    assert (creds.ssl_context, creds.generation) == (first, generation), "unchanged: kept"
    write_cert(proxy, hours=12)
    os.utime(proxy, ns=(1, 10**18))
    creds.refresh()
    assert creds.generation == generation + 1 and creds.ssl_context is not first


def test_a_half_written_renewal_keeps_the_old_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tmp_path / "x509up"
    write_cert(proxy, hours=1)
    creds = Credentials.create(discover(x509_proxy=proxy), None, env={})
    creds.check()
    context, generation = creds.ssl_context, creds.generation
    proxy.write_text("-----BEGIN CERTIFICATE-----\nMIIB")
    for _ in range(3):
        creds.before_request()
    assert (creds.ssl_context, creds.generation) == (context, generation)
    assert sum("cannot reload" in r.message for r in caplog.records) == 1
    write_cert(proxy, hours=2)
    creds.before_request()
    assert creds.generation == generation + 1


def tls_failure(message: str) -> httpx.ReadError:
    """An httpx error caused by an OpenSSL error, as httpcore and trio chain them."""
    try:
        try:
            raise ssl.SSLError(1, message)
        except ssl.SSLError as exc:
            raise httpx.ReadError("") from exc
    except httpx.ReadError as exc:
        return exc


@pytest.mark.parametrize(
    ("alert", "meaning"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "requires a client certificate and none was sent"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "rejected the client certificate: it has expired"),
        ("TLSV1_ALERT_UNKNOWN_CA", "its CA is not trusted there"),
    ],
)
def test_a_refused_client_certificate_is_eacces_with_the_reason(
    alert: str, meaning: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = translate(tls_failure(f"[SSL: {alert}] alert (_ssl.c:2580)"), "GET /f")
    assert isinstance(error, Forbidden) and error.errno == errno.EACCES
    assert meaning in str(error) and alert in str(error)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert meaning in caplog.records[0].getMessage()


def test_other_transport_failures_are_not_eacces() -> None:
    assert isinstance(
        translate(tls_failure("[SSL: WRONG_VERSION_NUMBER] wrong version"), "GET /f"),
        UpstreamError,
    )
    assert isinstance(translate(httpx.ReadError("reset"), "GET /f"), UpstreamError)
    assert isinstance(translate(httpx.ReadTimeout("slow"), "GET /f"), UpstreamTimeout)


async def test_both_connection_pools_follow_one_credential_generation(tmp_path: Path) -> None:
    """The httpx pool and the ranged-GET transport compare the same generation."""
    proxy = tmp_path / "x509up"
    write_cert(proxy, hours=1)
    creds = Credentials.create(discover(x509_proxy=proxy), None, env={})
    creds.check()
    tls = TLSGeneration(creds)
    generation, context = tls.current()
    assert tls.renews and tls.is_current(generation) and context is creds.ssl_context

    class Pools(CredentialTransport):
        """The real pool switching, over an in-process network (no TLS server needed)."""

        def _new_pool(self, context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
            assert context is creds.ssl_context, "each pool gets the current context"
            return httpx.MockTransport(lambda request: httpx.Response(200))  # type: ignore[return-value]

    pools = Pools(tls, limits=httpx.Limits())
    async with httpx.AsyncClient(transport=pools) as client:
        await client.get("https://fed.test/")
        assert pools.pools_made == 1
        write_cert(proxy, hours=12)
        os.utime(proxy, ns=(1, 10**18))
        await client.get("https://fed.test/")  # the renewal is noticed here
        assert pools.pools_made == 2
    assert not tls.is_current(generation), "the transport's old connections are not reused"
    assert tls.current()[0] == generation + 1
