"""Units of the HTTPS mode: rules, tokens, DNs, VOMS attribute certificates, identities."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from davfed_testfed.apache import (
    CERT_HEADER,
    CHAIN_HEADER,
    SECRET_HEADER,
    VERIFY_HEADER,
    render_config,
)
from davfed_testfed.auth import (
    Authenticator,
    Identity,
    Rules,
    RulesError,
    identity_from_chain,
    parse_rule,
    short_fqan,
    voms_fqans,
)
from davfed_testfed.pki import TestPKI, dn_of, name_from_dn
from davfed_testfed.tokens import TokenError, make_jwt, verify_jwt
from tests.testfed_fixtures import HTTPS_MISSING, needs_https

ALICE = "/DC=org/DC=test/CN=Alice"


# --- rules ----------------------------------------------------------------------------------


def test_parse_rule_forms() -> None:
    rule = parse_rule(f'glb.allowusers[]: "{ALICE}" /myfed/ rl')
    assert rule is not None
    assert (rule.kind, rule.subject, rule.prefix, rule.modes) == ("user", ALICE, "/myfed/", "rl")
    rule = parse_rule("allowgroups /belle* /myfed/data r")
    assert rule is not None and (rule.kind, rule.subject) == ("group", "/belle*")
    rule = parse_rule('allowgroups "" /myfed/pub rl')
    assert rule is not None and rule.subject == ""
    assert parse_rule("  # a comment") is None
    assert parse_rule("") is None
    dn_with_space = parse_rule('allowusers "/DC=org/CN=Jane Doe" /x r')
    assert dn_with_space is not None
    assert parse_rule(dn_with_space.line()) == dn_with_space
    assert Rules.parse([r.line() for r in Rules.parse(["allowgroups '' /x r"]).rules]).lines() == [
        'glb.allowgroups[]: "" /x r'
    ]


@pytest.mark.parametrize(
    "line",
    [
        "allowusers alice /myfed/",
        "allowusers alice myfed/ r",
        "allowusers alice /myfed/ rx",
        "denyusers alice /myfed/ r",
        'allowusers "alice /myfed/ r',
    ],
)
def test_bad_rules(line: str) -> None:
    with pytest.raises(RulesError):
        parse_rule(line)


def test_rules_semantics() -> None:
    rules = Rules.parse(
        [
            f'allowusers "{ALICE}" /myfed/alice r',
            "allowgroups /belle* /myfed/ l",
            "allowgroups /atlas /myfed/atlas r",
            'allowgroups "" /myfed/pub rl',
            "allowgroups /* /myfed/star r",  # two characters: not a wildcard (UGR's l > 2)
        ]
    )
    alice = Identity(ALICE)
    assert rules.allowed(alice, "/myfed/alice/x", "r")
    assert rules.allowed(alice, "/myfed/alicefoo", "r")  # a plain string prefix, as strncmp
    assert not rules.allowed(alice, "/myfed/alice/x", "l")
    assert not rules.allowed(Identity(ALICE + "/CN=1234"), "/myfed/alice/x", "r")
    assert rules.allowed(Identity("x", ("/belle",)), "/myfed/any", "l")
    assert rules.allowed(Identity("x", ("/belle-two/sub",)), "/myfed/any", "l")
    assert not rules.allowed(Identity("x", ("/belle",)), "/myfed/any", "r")
    assert rules.allowed(Identity("x", ("/atlas",)), "/myfed/atlas/f", "r")
    assert not rules.allowed(Identity("x", ("/atlas/prod",)), "/myfed/atlas/f", "r")
    assert rules.allowed(Identity("nobody"), "/myfed/pub/f", "r")
    assert not rules.allowed(Identity("x", ("/belle",)), "/myfed/pub/f", "r")
    assert not rules.allowed(Identity("x", ("/anything",)), "/myfed/star", "r")
    assert Rules().allowed(Identity("nobody"), "/anything", "r")  # no rules: allow all


def test_short_fqan() -> None:
    assert short_fqan("/belle/Role=NULL/Capability=NULL") == "/belle"
    assert short_fqan("/belle/prod/Role=NULL/Capability=NULL") == "/belle/prod"
    assert short_fqan("/belle/Role=admin/Capability=NULL") == "/belle/Role=admin"


# --- tokens ---------------------------------------------------------------------------------


def test_tokens() -> None:
    key = b"k" * 32
    now = time.time()
    token = make_jwt({"sub": "alice", "exp": now + 60, "wlcg.groups": ["/belle"]}, key)
    assert verify_jwt(token, key)["sub"] == "alice"
    with pytest.raises(TokenError, match="signature"):
        verify_jwt(token, b"other")
    with pytest.raises(TokenError, match="expired"):
        verify_jwt(make_jwt({"sub": "a", "exp": now - 1}, key), key)
    with pytest.raises(TokenError, match="expired"):
        verify_jwt(make_jwt({"sub": "a"}, key), key)  # no exp: refused
    with pytest.raises(TokenError, match="not yet"):
        verify_jwt(make_jwt({"sub": "a", "exp": now + 999, "nbf": now + 600}, key), key)
    with pytest.raises(TokenError, match="malformed"):
        verify_jwt("a.b", key)
    payload = token.split(".")[1]
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="algorithm"):
        verify_jwt(f"{unsigned}.{payload}.", key)
    assert token not in str(TokenError("token expired"))


# --- names, chains, VOMS --------------------------------------------------------------------


def test_dn_round_trip() -> None:
    assert dn_of(name_from_dn(ALICE)) == ALICE
    with pytest.raises(ValueError):
        name_from_dn("/XX=unknown")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    if HTTPS_MISSING is not None:
        pytest.skip(HTTPS_MISSING)
    return TestPKI.create(tmp_path_factory.mktemp("auth-pki"))


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@needs_https
def test_pki_layout(pki: TestPKI) -> None:
    hashed = list(pki.ca_dir.glob("*.0"))
    assert len(hashed) == 1 and hashed[0].is_symlink()
    stem = hashed[0].name[:-2]
    assert (pki.ca_dir / f"{stem}.signing_policy").exists()
    assert (pki.ca_dir / f"{stem}.namespaces").exists()
    for path in (pki.user_key("alice"), pki.host_key, pki.token_key_file):
        assert path.stat().st_mode & 0o077 == 0
    host = x509.load_pem_x509_certificate(pki.host_cert.read_bytes())
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert TestPKI.open(pki.root).dn("bob") == "/DC=org/DC=test/CN=Bob"


@needs_https
def test_voms_proxy_identity(pki: TestPKI) -> None:
    voms = [x509.load_pem_x509_certificate(pki.voms_cert.read_bytes())]
    chain = load_chain(pki.proxy("alice"))
    assert voms_fqans(chain[0], voms) == [
        "/belle/Role=NULL/Capability=NULL",
        "/belle/production/Role=NULL/Capability=NULL",
    ]
    who = identity_from_chain(chain, voms)
    assert who == Identity(ALICE, ("/belle", "/belle/production"), "x509")
    plain = identity_from_chain(load_chain(pki.proxy("alice", voms=False)), voms)
    assert plain == Identity(ALICE, (), "x509")
    # The same AC is worthless without the VOMS server's certificate.
    ca = [x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())]
    assert voms_fqans(chain[0], ca) == []


@needs_https
def test_proxy_renewal_replaces_the_file(pki: TestPKI, tmp_path: Path) -> None:
    target = tmp_path / "x509up_u0"
    first = pki.proxy("bob", out=target).read_bytes()
    second = pki.proxy("bob", out=target).read_bytes()
    assert first != second
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x509up_u0"]
    expired = load_chain(pki.proxy("bob", expired=True, voms=False))[0]
    assert expired.not_valid_after_utc.timestamp() < time.time() - 1800
    short = load_chain(pki.proxy("bob", seconds=30))[0]
    assert abs(short.not_valid_after_utc.timestamp() - (time.time() + 30)) < 5


@needs_https
def test_authenticator_trusts_headers_only_with_the_secret(pki: TestPKI) -> None:
    voms = x509.load_pem_x509_certificate(pki.voms_cert.read_bytes())
    auth = Authenticator(secret="s3cret", token_key=pki.token_key(), trusted_voms=[voms])
    certs = load_chain(pki.proxy("alice"))
    headers = {
        SECRET_HEADER: "s3cret",
        VERIFY_HEADER: "SUCCESS",
        CERT_HEADER: base64.b64encode(certs[0].public_bytes(Encoding.PEM)).decode(),
        CHAIN_HEADER.format(0): base64.b64encode(certs[1].public_bytes(Encoding.PEM)).decode(),
    }
    assert auth.from_apache(headers)
    assert auth.identify(headers).name == ALICE
    assert not auth.from_apache({**headers, SECRET_HEADER: "guess"})
    assert auth.identify({**headers, VERIFY_HEADER: "NONE"}).name == "nobody"
    token = pki.token("bob")
    assert auth.identify({**headers, "Authorization": f"Bearer {token}"}) == Identity(
        "bob", ("/belle",), "token"
    )
    with pytest.raises(TokenError):
        auth.identify({"Authorization": "Basic dXNlcjpwdw=="})


def test_apache_config_shape(tmp_path: Path) -> None:
    from davfed_testfed.apache import ApacheSite

    site = ApacheSite(
        work_dir=tmp_path,
        address="127.0.0.1",
        require_port=1001,
        optional_port=1002,
        backend_port=1003,
        secret="xyz",
        ca_dir=tmp_path / "certificates",
        host_cert=tmp_path / "hostcert.pem",
        host_key=tmp_path / "hostkey.pem",
        as_root=True,
    )
    conf = render_config(site)
    assert "SSLVerifyClient require" in conf and "SSLVerifyClient optional" in conf
    assert "SSLVerifyDepth 10" in conf
    assert f"SSLCACertificatePath {tmp_path}/certificates" in conf
    assert "ProxyPass / http://127.0.0.1:1003/ nocanon" in conf
    assert "ProxyPassReverse" not in conf
    assert "GridSiteGSIProxyLimit" in conf and "GridSiteAuth off" in conf
    assert "Include" not in conf  # no system configuration
