"""Grid credentials through a real mount against the HTTPS federation (Apache, mod_ssl, gridsite).

The rules in force are ``HTTPS_RULES`` (``tests/testfed_fixtures.py``): alice's VOMS
proxy (/belle, /belle/production) reads and lists everything; bob's (/belle) reads
hello.txt and many/ and lists nothing; mallory (a plain proxy, no FQANs) reads small/
and deep/ only. Every mount is unmounted by the ``mounter`` fixture.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from davfed_testfed import TestFederation
from davfed_testfed.pki import TestPKI
from tests.mounting import Mounter, is_mounted, requires_fuse, run_helper, the_daemon

pytestmark = [pytest.mark.mount, requires_fuse]


def options(pki: TestPKI, *extra: str) -> list[str]:
    return ["-o", ",".join([f"capath={pki.ca_dir}", *extra])]


def expiry(pem: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem.read_bytes()).not_valid_after_utc


def refused(path: Path) -> int | None:
    """The errno of reading ``path`` whole, None if the read worked."""
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def client_users(fed: TestFederation, pki: TestPKI) -> list[str]:
    """Whose certificate each request Apache logged came with, in order ("-": none).

    Apache logs the subject of the proxy, ``<user's DN>/CN=<serial>``.
    """
    dns = {pki.dn(name): name for name in ("alice", "bob", "mallory")}
    users = []
    for line in fed.apache_access_log.read_text().splitlines():
        subject = line.split('"')[1] if line.count('"') >= 4 else ""
        owner = subject.rsplit("/CN=", 1)[0] if subject.count("/CN=") > 1 else subject
        users.append(dns.get(owner, "-"))
    return users


def mount_failure(fed_url: str, tmp_path: Path, *args: str, code: int = 32) -> str:
    """Run the mount helper expecting it to fail with ``code``; the one line it printed."""
    mnt = tmp_path / "refused"
    mnt.mkdir(exist_ok=True)
    result = run_helper(fed_url, mnt, "-o", f"cache_dir={tmp_path}/cache-refused", *args)
    assert not is_mounted(mnt)
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("davfed: "), result.stderr
    return lines[0]


# --- X.509 proxies on the SSLVerifyClient require port -----------------------------------


def test_a_voms_proxy_reads_and_lists(
    https_testfed: TestFederation,
    testfed_pki: TestPKI,
    testfed_files: dict[str, bytes],
    mounter: Mounter,
) -> None:
    proxy = testfed_pki.proxy("alice")
    mnt = mounter(https_testfed.url, *options(testfed_pki, f"x509_proxy={proxy}"))
    for name in ("hello.txt", "data/big.bin", "names/with space.txt"):
        assert (mnt / name).read_bytes() == testfed_files[name]
    assert "hello.txt" in os.listdir(mnt)
    assert sorted(os.listdir(mnt / "many")) == [f"f{i:03d}.txt" for i in range(30)]
    assert client_users(https_testfed, testfed_pki)[-1] == "alice", "Apache saw alice's proxy"


def test_without_r_cat_is_eacces_but_stat_works(
    https_testfed: TestFederation,
    testfed_pki: TestPKI,
    testfed_files: dict[str, bytes],
    mounter: Mounter,
) -> None:
    proxy = testfed_pki.proxy("bob")
    mnt = mounter(https_testfed.url, *options(testfed_pki, f"x509_proxy={proxy}"))
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    target = mnt / "data" / "block.bin"
    assert target.stat().st_size == len(testfed_files["data/block.bin"])
    result = subprocess.run(["cat", str(target)], capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"Permission denied" in result.stderr
    assert result.stdout == b""
    assert refused(target) == errno.EACCES, "and again: a 403 is not remembered as data"


def test_without_l_listing_is_eacces(
    https_testfed: TestFederation, testfed_pki: TestPKI, mounter: Mounter
) -> None:
    proxy = testfed_pki.proxy("bob")
    mnt = mounter(https_testfed.url, *options(testfed_pki, f"x509_proxy={proxy}"))
    for directory in (mnt, mnt / "many"):  # many/: r for bob, but no l
        with pytest.raises(PermissionError):
            os.listdir(directory)
    assert (mnt / "many" / "f007.txt").read_bytes() == b"7\n"


def test_without_a_credential_the_mount_fails_in_the_handshake(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path
) -> None:
    line = mount_failure(https_testfed.url, tmp_path, *options(testfed_pki))
    assert "requires a client certificate and none was sent" in line
    assert "CERTIFICATE_REQUIRED" in line
    assert "no credential found" in line and "/tmp/x509up_u0" in line


def test_an_expired_proxy_is_refused_at_mount_time(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path
) -> None:
    proxy = testfed_pki.proxy("alice", expired=True)
    line = mount_failure(https_testfed.url, tmp_path, *options(testfed_pki, f"x509_proxy={proxy}"))
    assert f"{proxy} expired at {expiry(proxy):%Y-%m-%d %H:%M:%S} UTC" in line


@pytest.mark.parametrize("option", ["x509_proxy", "token_file"])
def test_a_credential_file_with_mode_0644_is_refused(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path, option: str
) -> None:
    secret = tmp_path / "credential"
    if option == "x509_proxy":
        shutil.copyfile(testfed_pki.proxy("alice"), secret)
    else:
        testfed_pki.token_file("alice", out=secret)
    secret.chmod(0o644)
    url = https_testfed.url if option == "x509_proxy" else https_testfed.optional_url
    line = mount_failure(url, tmp_path, *options(testfed_pki, f"{option}={secret}"))
    assert f"{secret} has mode 0644" in line
    assert "chmod 600" in line


def test_an_untrusted_server_is_refused_with_the_reason(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path
) -> None:
    """Without capath= the test CA is unknown (neither the system bundle nor
    /etc/grid-security/certificates has it): the message says what to set."""
    proxy = testfed_pki.proxy("alice")
    assert not Path("/etc/grid-security/certificates").exists()
    line = mount_failure(https_testfed.url, tmp_path, "-o", f"x509_proxy={proxy}")
    assert "cannot verify the server's certificate" in line and "capath=" in line


def test_a_proxy_replaced_on_disk_is_used_at_once(
    https_testfed: TestFederation,
    testfed_pki: TestPKI,
    testfed_files: dict[str, bytes],
    tmp_path: Path,
    mounter: Mounter,
) -> None:
    """Mallory's proxy, replaced by alice's (atomically, as cron does): the next request
    is alice's, although a connection made with mallory's proxy is still kept alive."""
    proxy = tmp_path / "x509up"
    testfed_pki.proxy("mallory", out=proxy)
    mnt = mounter(https_testfed.url, *options(testfed_pki, f"x509_proxy={proxy}"))
    assert refused(mnt / "hello.txt") == errno.EACCES
    assert (mnt / "small" / "one.bin").read_bytes() == b"\x01"
    with pytest.raises(PermissionError):
        os.listdir(mnt / "many")
    # A stat is a PROPFIND whose answer is read whole: its connection stays open.
    assert (mnt / "data" / "block.bin").stat().st_size == len(testfed_files["data/block.bin"])
    testfed_pki.proxy("alice", out=proxy)
    assert len(os.listdir(mnt / "many")) == 30
    assert client_users(https_testfed, testfed_pki)[-1] == "alice"
    assert (mnt / "hello.txt").read_bytes() == testfed_files["hello.txt"]
    assert (mnt / "data" / "block.bin").read_bytes() == testfed_files["data/block.bin"]
    assert set(client_users(https_testfed, testfed_pki)[-3:]) == {"alice"}


def test_a_proxy_that_expires_while_mounted_is_eacces_until_renewed(
    https_testfed: TestFederation,
    testfed_pki: TestPKI,
    testfed_files: dict[str, bytes],
    tmp_path: Path,
    mounter: Mounter,
) -> None:
    proxy = tmp_path / "x509up"
    log_file = tmp_path / "davfed.log"
    testfed_pki.proxy("alice", seconds=8, out=proxy)
    expires = expiry(proxy)
    mnt = mounter(
        https_testfed.url,
        *options(testfed_pki, f"x509_proxy={proxy}", f"log_file={log_file}", "cache_size=0"),
    )
    assert (mnt / "many" / "f000.txt").read_bytes() == b"0\n"
    wait = (expires - dt.datetime.now(dt.UTC)).total_seconds() + 1.2
    assert wait > 0, "the mount took the proxy's whole lifetime"
    time.sleep(wait)
    for i in (1, 2, 3):  # files never read: nothing cached
        assert refused(mnt / "many" / f"f{i:03d}.txt") == errno.EACCES
    lines = log_file.read_text().splitlines()
    expired_lines = [line for line in lines if "ERROR davfed_fuse.net.credentials" in line]
    assert len(expired_lines) == 1, expired_lines  # besides each failed call's WARNING
    assert f"{proxy} expired at {expires:%Y-%m-%d %H:%M:%S} UTC" in expired_lines[0]
    assert "renewed" in expired_lines[0]
    testfed_pki.proxy("alice", out=proxy)  # renewed in place, no remount
    assert (mnt / "many" / "f001.txt").read_bytes() == b"1\n"
    assert (mnt / "data" / "big.bin").read_bytes() == testfed_files["data/big.bin"]
    assert "reloaded the renewed credential" in log_file.read_text()


# --- bearer tokens on the SSLVerifyClient optional port ----------------------------------


def authorization_counts(fed: TestFederation) -> list[int]:
    return [fed.authorization_requests(e.index) for e in fed.endpoints]


def bytes_served(fed: TestFederation) -> int:
    return sum(fed.bytes_sent(e.index) for e in fed.endpoints)


def wait_for_bytes(fed: TestFederation, more_than: int) -> int:
    """Body bytes served by all endpoints, once above ``more_than`` (nginx logs at the end)."""
    deadline = time.monotonic() + 10
    while (served := bytes_served(fed)) <= more_than and time.monotonic() < deadline:
        time.sleep(0.1)
    return served


def test_a_bearer_token_works_and_never_reaches_storage(
    https_testfed: TestFederation,
    testfed_pki: TestPKI,
    testfed_files: dict[str, bytes],
    tmp_path: Path,
    mounter: Mounter,
) -> None:
    token_file = tmp_path / "bt"
    token = testfed_pki.token_file("alice", out=token_file).read_text().strip()
    log_file = tmp_path / "davfed.log"
    before, served = authorization_counts(https_testfed), bytes_served(https_testfed)
    mnt = mounter(
        https_testfed.optional_url,
        *options(testfed_pki, f"token_file={token_file}", f"log_file={log_file}", "debug"),
    )
    # Anonymous clients may read deep/ only: these reads need the token.
    for name in ("hello.txt", "data/block.bin", "data/big.bin"):
        assert (mnt / name).read_bytes() == testfed_files[name]
    assert os.listdir(mnt / "small") == ["one.bin"]
    assert wait_for_bytes(https_testfed, served) >= served + len(testfed_files["data/big.bin"])
    assert authorization_counts(https_testfed) == before, "a token reached a storage endpoint"

    # A renewed token (another user's, without groups) is used at once.
    testfed_pki.token_file("mallory", out=token_file)
    assert refused(mnt / "many" / "f004.txt") == errno.EACCES
    assert (mnt / "deep" / "a" / "b" / "c" / "leaf.txt").read_bytes() == b"leaf\n"

    # The check above can fail: a request that does carry the header is counted.
    replica = https_testfed.replica_url("hello.txt", 0)
    httpx.get(replica, headers={"Authorization": "Bearer not-a-secret"}).raise_for_status()
    deadline = time.monotonic() + 10
    while authorization_counts(https_testfed)[0] == before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert authorization_counts(https_testfed)[0] == before[0] + 1

    log = log_file.read_text()
    assert "GET https://" in log, "the debug log has the requests"
    assert token not in log
    assert token.split(".")[2] not in log, "not even the signature"


def daemon_cmdline(mnt: Path) -> str:
    return (
        (Path("/proc") / str(the_daemon(mnt)) / "cmdline")
        .read_bytes()
        .replace(b"\0", b" ")
        .decode()
    )


def test_no_secret_in_ps_or_in_errors(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path, mounter: Mounter
) -> None:
    token_file = tmp_path / "bt"
    token = testfed_pki.token_file("bob", out=token_file).read_text().strip()
    mnt = mounter(https_testfed.optional_url, *options(testfed_pki, f"token_file={token_file}"))
    cmdline = daemon_cmdline(mnt)
    assert str(token_file) in cmdline and token not in cmdline
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert token not in ps.stdout
    # An error that involves the token (bob may not read data/) does not show it either.
    result = subprocess.run(["cat", str(mnt / "data" / "block.bin")], capture_output=True)
    assert result.returncode == 1 and token.encode() not in result.stderr


def test_a_secret_on_the_command_line_is_refused(
    https_testfed: TestFederation, testfed_pki: TestPKI, tmp_path: Path
) -> None:
    token = testfed_pki.token("alice")
    line = mount_failure(https_testfed.optional_url, tmp_path, "-o", f"token={token}", code=1)
    assert "never accepted inline" in line and "token_file=" in line
    assert token not in line


# --- pre-signed URLs in the log ----------------------------------------------------------

SIGNATURE = re.compile(r"(?i)[?&](X-Amz-Signature|Signature|X-Amz-Credential)=([^&\s\"'<>]*)")


def test_pre_signed_query_strings_are_redacted_in_the_log(
    testfed_tree: Path,
    testfed_files: dict[str, bytes],
    make_testfed: Callable[..., TestFederation],
    tmp_path: Path,
    mounter: Mounter,
) -> None:
    fed = make_testfed(testfed_tree, endpoints=2, kinds=["s3v4", "s3v2"])
    log_file = tmp_path / "davfed.log"
    mnt = mounter(fed.url, "-o", f"log_file={log_file},debug")
    for name in ("hello.txt", "data/block.bin"):
        assert (mnt / name).read_bytes() == testfed_files[name]
    signed = fed.replica_url("hello.txt", 0)
    assert SIGNATURE.search(signed), "the replicas are pre-signed"
    found = SIGNATURE.findall(log_file.read_text())
    assert found, "the debug log shows the redirect targets"
    assert {value for _, value in found} == {"[REDACTED]"}
