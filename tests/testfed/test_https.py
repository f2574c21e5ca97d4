"""The HTTPS mode: real Apache (mod_ssl + mod_gridsite), real TLS, grid proxies, tokens.

Clients are curl (``-E proxy --capath``) and davix, unchanged. The rules in force are
``HTTPS_RULES`` (see ``tests/testfed_fixtures.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from davfed_testfed.pki import TestPKI
from tests.mounting import wait_until
from tests.testfed_fixtures import HTTPS_RULES, needs_https

pytestmark = needs_https

PROPFIND_BODY = '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


def curl(*args: str, capath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """curl printing the status code last; never follows redirects unless told."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"]
    if capath is not None:
        argv += ["--capath", str(capath)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def status(fed: TestFederation, path: str, *args: str, url: str | None = None) -> int:
    assert fed.pki is not None
    result = curl(*args, (url or fed.url) + path, capath=fed.pki.ca_dir)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def with_proxy(
    pki: TestPKI,
    name: str,
    voms: bool | None = None,
    fqans: list[str] | None = None,
    expired: bool = False,
) -> list[str]:
    return ["-E", str(pki.proxy(name, voms=voms, fqans=fqans, expired=expired))]


def propfind(depth: str) -> list[str]:
    return ["-X", "PROPFIND", "-H", f"Depth: {depth}", "--data", PROPFIND_BODY]


# --- X.509 with SSLVerifyClient require ---------------------------------------------------


def test_voms_proxy_reads_and_lists(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    alice = with_proxy(testfed_pki, "alice")
    assert https_testfed.url.startswith("https://127.0.0.1:")
    result = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--capath", str(testfed_pki.ca_dir),
         *alice, https_testfed.file_url("data/block.bin")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    head = result.stdout.lower()
    assert head.startswith("http/1.1 302")
    # Location passes through Apache unchanged: a plain-HTTP replica on loopback.
    assert "\nlocation: http://127.0.0.1:" in head
    port = https_testfed.url.split(":")[2].split("/")[0]
    assert f"link: <//127.0.0.1:{port}/myfed/data/block.bin?metalink>" in head
    assert status(https_testfed, "", *alice, *propfind("1")) == 207
    assert status(https_testfed, "data/", *alice) == 200
    assert status(https_testfed, "data/block.bin?metalink", *alice) == 200
    assert status(https_testfed, "data/block.bin", *alice, "-I") == 302


def test_follow_redirect_gets_the_bytes(
    https_testfed: TestFederation, testfed_pki: TestPKI, testfed_files: dict[str, bytes]
) -> None:
    result = subprocess.run(
        ["curl", "-sSfL", "--capath", str(testfed_pki.ca_dir), *with_proxy(testfed_pki, "alice"),
         https_testfed.file_url("hello.txt")],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout == testfed_files["hello.txt"]


def test_user_certificate_and_key(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    # A full user certificate has no VOMS FQANs: only the "" rule (deep/) applies.
    cert = ["--cert", str(testfed_pki.user_cert("bob")), "--key", str(testfed_pki.user_key("bob"))]
    assert status(https_testfed, "deep/a/b/c/leaf.txt", *cert) == 302
    assert status(https_testfed, "hello.txt", *cert) == 403


def test_no_client_certificate_fails_in_the_handshake(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    result = curl(https_testfed.file_url("hello.txt"), capath=testfed_pki.ca_dir)
    assert result.returncode in (35, 56), result
    assert "certificate required" in result.stderr or "handshake" in result.stderr


def test_expired_proxy_is_refused_in_the_handshake(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    proxy = testfed_pki.proxy("alice", expired=True)
    result = curl("-E", str(proxy), https_testfed.file_url("hello.txt"), capath=testfed_pki.ca_dir)
    assert result.returncode in (35, 56), result
    assert "certificate expired" in result.stderr
    # Apache logs the refused handshake (at LogLevel ssl:info), soon after it ends.
    log = https_testfed.apache_error_log
    assert wait_until(lambda: "in handshake" in log.read_text(), timeout=10)


def test_untrusted_ca_is_refused(
    https_testfed: TestFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stranger = TestPKI.create(tmp_path_factory.mktemp("other-pki"))
    assert https_testfed.pki is not None
    result = curl(
        "--cert", str(stranger.user_cert("alice")), "--key", str(stranger.user_key("alice")),
        https_testfed.file_url("hello.txt"), capath=https_testfed.pki.ca_dir,
    )  # fmt: skip
    assert result.returncode in (35, 56), result


def test_without_r_get_is_403_but_stat_works(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    bob = with_proxy(testfed_pki, "bob")  # /belle only
    assert status(https_testfed, "hello.txt", *bob) == 302
    assert status(https_testfed, "data/block.bin", *bob) == 403
    assert status(https_testfed, "data/block.bin", *bob, "-I") == 403
    assert status(https_testfed, "data/block.bin?metalink", *bob) == 403
    assert status(https_testfed, "data/block.bin", *bob, *propfind("0")) == 207
    assert status(https_testfed, "data/", *bob, *propfind("0")) == 207
    result = subprocess.run(
        ["curl", "-sS", "--capath", str(testfed_pki.ca_dir), *bob,
         https_testfed.file_url("data/block.bin")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "<html>" in result.stdout
    assert "Unauthorized operation r on /myfed/data/block.bin" in result.stdout


def test_without_l_listing_is_403(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    bob = with_proxy(testfed_pki, "bob")
    assert status(https_testfed, "many/f001.txt", *bob) == 302
    assert status(https_testfed, "many/", *bob, *propfind("1")) == 403
    assert status(https_testfed, "many/", *bob) == 403  # GET on a collection is a listing
    assert status(https_testfed, "many/", *bob, *propfind("0")) == 207
    mallory = with_proxy(testfed_pki, "mallory")  # by DN: small/ r
    assert status(https_testfed, "small/one.bin", *mallory) == 302
    assert status(https_testfed, "small/", *mallory, *propfind("1")) == 403
    assert status(https_testfed, "hello.txt", *mallory) == 403


def test_group_wildcard(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    sub = with_proxy(testfed_pki, "bob", fqans=["/belle/production/analysis/Role=NULL"])
    assert status(https_testfed, "data/block.bin", *sub) == 302
    assert status(https_testfed, "data/", *sub, *propfind("1")) == 207
    assert status(https_testfed, "data/block.bin", *with_proxy(testfed_pki, "bob")) == 403


def test_empty_fqan_rule(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    plain = with_proxy(testfed_pki, "alice", voms=False)  # grid-proxy-init: no FQANs
    assert status(https_testfed, "deep/a/b/c/leaf.txt", *plain) == 302
    assert status(https_testfed, "deep/a/", *plain, *propfind("1")) == 207
    assert status(https_testfed, "hello.txt", *plain) == 403
    voms = with_proxy(testfed_pki, "bob")  # has an FQAN: "" does not match it
    assert status(https_testfed, "deep/a/b/c/leaf.txt", *voms) == 403


def test_unsigned_voms_attributes_are_ignored(
    https_testfed: TestFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # An AC signed by a VOMS server of another CA (but a proxy of a trusted user): no FQANs.
    pki = https_testfed.pki
    assert pki is not None
    other = TestPKI.create(tmp_path_factory.mktemp("rogue-voms"))
    out = tmp_path_factory.mktemp("rogue") / "proxy.pem"
    argv = [
        "voms-proxy-fake", "-q", "-rfc", "-cert", str(pki.user_cert("alice")),
        "-key", str(pki.user_key("alice")), "-certdir", str(pki.ca_dir),
        "-hostcert", str(other.voms_cert), "-hostkey", str(other.voms_key), "-voms", "belle",
        "-uri", "voms.test:15000", "-fqan", "/belle/production/Role=NULL/Capability=NULL",
        "-out", str(out),
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    assert status(https_testfed, "data/block.bin", "-E", str(out)) == 403


def test_rules_none_means_allow_all(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    https_testfed.set_auth_rules([])
    assert https_testfed.auth_rules() == []
    assert status(https_testfed, "data/block.bin", *with_proxy(testfed_pki, "mallory")) == 302
    https_testfed.set_auth_rules(HTTPS_RULES)
    assert status(https_testfed, "data/block.bin", *with_proxy(testfed_pki, "mallory")) == 403


def test_bad_rules_are_refused(https_testfed: TestFederation) -> None:
    from davfed_testfed import TestFedError

    with pytest.raises(TestFedError, match="modes are letters of rwldc"):
        https_testfed.set_auth_rules(["allowusers alice /myfed/ rx"])


def test_backend_refuses_requests_that_bypass_apache(https_testfed: TestFederation) -> None:
    backend = https_testfed.backend_url + "hello.txt"
    assert curl(backend).stdout == "403"
    assert curl("-X", "OPTIONS", backend).stdout == "403"
    forged = ["-H", "X-Testfed-Secret: guess", "-H", "X-Testfed-Client-Verify: SUCCESS"]
    assert curl(*forged, backend).stdout == "403"


def test_client_cannot_forge_identity_headers(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    # Apache overwrites X-Testfed-*: a plain proxy claiming alice's VOMS cert gets nothing.
    import base64

    voms_pem = testfed_pki.proxy("alice").read_bytes()
    leaf = voms_pem[: voms_pem.index(b"-----END CERTIFICATE-----") + 26]
    forged = base64.b64encode(leaf).decode()
    headers = ["-H", f"X-Testfed-Client-Cert: {forged}", "-H", "X-Testfed-Secret: x"]
    plain = with_proxy(testfed_pki, "mallory")
    assert status(https_testfed, "data/block.bin", *plain, *headers) == 403


# --- tokens, SSLVerifyClient optional ------------------------------------------------------


def bearer(token: str) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"]


def test_token_on_the_optional_port(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    url = https_testfed.optional_url
    alice = bearer(testfed_pki.token("alice"))  # wlcg.groups /belle, /belle/production
    assert status(https_testfed, "data/block.bin", *alice, url=url) == 302
    assert status(https_testfed, "data/", *alice, *propfind("1"), url=url) == 207
    bob = bearer(testfed_pki.token("bob"))
    assert status(https_testfed, "data/block.bin", *bob, url=url) == 403
    assert status(https_testfed, "data/block.bin", *bob, *propfind("0"), url=url) == 207
    nogroups = bearer(testfed_pki.token("alice", groups=[]))
    assert status(https_testfed, "deep/a/b/c/leaf.txt", *nogroups, url=url) == 302


def test_bad_and_expired_tokens_are_401(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    url = https_testfed.optional_url
    expired = bearer(testfed_pki.token("alice", expired=True))
    assert status(https_testfed, "hello.txt", *expired, url=url) == 401
    forged = bearer(testfed_pki.token("alice", key=b"not the federation's key"))
    assert status(https_testfed, "hello.txt", *forged, url=url) == 401
    assert status(https_testfed, "hello.txt", *bearer("garbage"), url=url) == 401
    result = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--capath", str(testfed_pki.ca_dir),
         *expired, url + "hello.txt"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert 'www-authenticate: bearer error="invalid_token"' in result.stdout.lower()


def test_anonymous_on_the_optional_port_is_nobody(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    url = https_testfed.optional_url
    assert status(https_testfed, "hello.txt", url=url) == 403
    assert status(https_testfed, "deep/a/b/c/leaf.txt", url=url) == 302  # "" rule: no FQANs
    assert (
        status(https_testfed, "data/block.bin", *with_proxy(testfed_pki, "alice"), url=url) == 302
    )


def test_token_without_certificate_fails_on_the_require_port(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    result = curl(*bearer(testfed_pki.token("alice")), https_testfed.file_url("hello.txt"),
                  capath=testfed_pki.ca_dir)  # fmt: skip
    assert result.returncode in (35, 56), result


def test_endpoint_log_records_authorization_headers(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    url = https_testfed.optional_url + "small/one.bin"
    token = bearer(testfed_pki.token("alice"))
    before = [https_testfed.authorization_requests(e.index) for e in https_testfed.endpoints]
    # curl -L does not forward Authorization to another host:port ...
    ok = curl("-L", *token, url, capath=testfed_pki.ca_dir)
    assert ok.stdout == "200", ok.stderr
    after = [https_testfed.authorization_requests(e.index) for e in https_testfed.endpoints]
    assert after == before
    # ... --location-trusted does, and the endpoint's log shows it (never the token itself).
    leak = curl("-L", "--location-trusted", *token, url, capath=testfed_pki.ca_dir)
    assert leak.stdout == "200", leak.stderr
    leaked = [https_testfed.authorization_requests(e.index) for e in https_testfed.endpoints]
    assert sum(leaked) == sum(before) + 1
    for endpoint in https_testfed.endpoints:
        assert endpoint.access_log is not None
        assert "eyJ" not in endpoint.access_log.read_text()


# --- grid clients ------------------------------------------------------------------------------

needs_davix = pytest.mark.skipif(shutil.which("davix-ls") is None, reason="davix not installed")


@needs_davix
def test_davix_with_a_voms_proxy(
    https_testfed: TestFederation, testfed_pki: TestPKI, testfed_files: dict[str, bytes]
) -> None:
    proxy = str(testfed_pki.proxy("alice"))
    capath = str(testfed_pki.ca_dir)
    ls = subprocess.run(
        ["davix-ls", "-E", proxy, "--capath", capath, https_testfed.url + "data/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert set(ls.stdout.split()) == {"block.bin", "big.bin"}
    get = subprocess.run(
        ["davix-get", "-E", proxy, "--capath", capath, https_testfed.file_url("data/block.bin")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert get.returncode == 0, get.stderr
    assert get.stdout == testfed_files["data/block.bin"]
    denied = subprocess.run(
        ["davix-get", "-E", str(testfed_pki.proxy("bob")), "--capath", capath,
         https_testfed.file_url("data/block.bin")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert denied.returncode != 0
    assert "403" in denied.stderr


# --- lifecycle ---------------------------------------------------------------------------------


def test_apache_starts_and_stops_cleanly(
    make_testfed: object, testfed_tree: Path, testfed_pki: TestPKI
) -> None:
    fed = TestFederation(testfed_tree, endpoints=1, https=True, pki=testfed_pki).start()
    try:
        pids = fed.apache_pids()
        assert len(pids) >= 2  # the parent and at least one worker
        assert fed.auth_rules() == []  # HTTPS mode always authorizes; no rules: allow all
        conf = Path(fed.info["https"]["apache_conf"])
        assert oct(conf.stat().st_mode & 0o777) == "0o600"  # holds the back-end secret
    finally:
        fed.stop()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not Path(fed.info["work_dir"]).exists()


def test_handle_makes_its_own_pki(testfed_tree: Path) -> None:
    with TestFederation(testfed_tree, endpoints=1, https=True) as fed:
        assert fed.pki is not None
        root = fed.pki.root
        assert any(fed.pki.ca_dir.glob("*.0"))
        assert status(fed, "hello.txt", *with_proxy(fed.pki, "alice")) == 302
    assert not root.exists()


def test_many_fqans_fit_through_apache(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    # A big attribute certificate makes the forwarded chain header large (> 8 KiB).
    fqans = [f"/belle/group{i:03d}/Role=NULL/Capability=NULL" for i in range(150)]
    fqans.append("/belle/production/Role=NULL/Capability=NULL")
    proxy = testfed_pki.proxy("bob", fqans=fqans)
    assert proxy.stat().st_size > 12000
    assert status(https_testfed, "data/block.bin", "-E", str(proxy)) == 302


# --- the command line --------------------------------------------------------------------------


def test_cli_https_mode(testfed_tree: Path, tmp_path: Path) -> None:
    from tests.testfed.test_cli import DAVFED, children

    rules = tmp_path / "rules"
    rules.write_text("# only alice's VO\nglb.allowgroups[]: /belle/production /myfed/ rl\n")
    pki_dir = tmp_path / "pki"
    proc = subprocess.Popen(
        [*DAVFED, "testfed", str(testfed_tree), "--port", "0", "--endpoints", "1", "--https",
         "--pki-dir", str(pki_dir), "--auth-rules", str(rules)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:") and url.endswith("/myfed/")
        notes = "".join(proc.stderr.readline() for _ in range(4))
        assert "optional-cert URL: https://127.0.0.1:" in notes
        assert f"CA dir: {pki_dir}/certificates" in notes
        pki = TestPKI.open(pki_dir)
        for name, expected in (("alice", "302"), ("bob", "403")):
            result = curl("-E", str(pki.proxy(name)), url + "hello.txt", capath=pki.ca_dir)
            assert result.stdout == expected, result.stderr
        descendants = children(proc.pid)
        assert len(descendants) >= 3  # nginx, apache2 and its worker(s)
        proc.kill()  # even SIGKILL leaves nothing behind (PR_SET_PDEATHSIG)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in descendants if Path(f"/proc/{p}").exists()]
            if not left:
                break
            time.sleep(0.05)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pki-dir", "/tmp"], "need --https"),
        (["--https", "--auth-rules", "/nonexistent/rules"], "is not a file"),
    ],
)
def test_cli_https_bad_input(testfed_tree: Path, args: list[str], message: str) -> None:
    from tests.testfed.test_cli import fail

    assert message in fail(str(testfed_tree), "--port", "0", *args)


def test_cli_bad_rules_file(testfed_tree: Path, tmp_path: Path) -> None:
    from tests.testfed.test_cli import fail

    rules = tmp_path / "rules"
    rules.write_text("allowusers alice /myfed/ rz\n")
    assert "modes are letters of rwldc" in fail(
        str(testfed_tree), "--port", "0", "--https", "--auth-rules", str(rules)
    )


def test_cli_https_port_in_use(testfed_tree: Path) -> None:
    import socket

    from tests.testfed.test_cli import fail

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = fail(str(testfed_tree), "--port", str(port), "--endpoints", "1", "--https")
    assert f"port {port}" in message and "already in use" in message


def test_proxy_expiring_while_in_use(https_testfed: TestFederation, testfed_pki: TestPKI) -> None:
    proxy = testfed_pki.proxy("alice", seconds=3)
    assert status(https_testfed, "hello.txt", "-E", str(proxy)) == 302
    time.sleep(3.5)
    result = curl("-E", str(proxy), https_testfed.file_url("hello.txt"), capath=testfed_pki.ca_dir)
    assert result.returncode in (35, 56) and "certificate expired" in result.stderr
    testfed_pki.proxy("alice", out=proxy)  # renewed in place
    assert status(https_testfed, "hello.txt", "-E", str(proxy)) == 302


def test_gzip_propfind_and_encoded_names_through_apache(
    https_testfed: TestFederation, testfed_pki: TestPKI
) -> None:
    from urllib.parse import quote

    from tests.testfed_fixtures import SPECIAL_NAMES

    alice = with_proxy(testfed_pki, "alice")
    result = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", "--capath", str(testfed_pki.ca_dir), *alice,
         *propfind("1"), https_testfed.url + "names/"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.startswith("HTTP/1.1 207")
    assert "content-encoding: gzip" in result.stdout.lower()
    for name in SPECIAL_NAMES:
        assert quote(name.split("/")[1]) in result.stdout
        assert status(https_testfed, quote(name), *alice) == 302
