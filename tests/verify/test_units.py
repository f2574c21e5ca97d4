"""``davfed verify`` without a mount: Digest parsing, paths to URLs, the redirect walk."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from davfed_fuse.cli import verify
from davfed_fuse.errors import UsageError
from davfed_fuse.net.federation import Federation
from davfed_fuse.system.mounttable import MountEntry, parse_mountinfo_line

MD5_HEX = hashlib.md5(b"x").hexdigest()
MD5_B64 = base64.b64encode(hashlib.md5(b"x").digest()).decode()


def entry(
    mountpoint: str, fstype: str = "fuse.davfed", source: str = "http://h/fed/"
) -> MountEntry:
    line = f"50 1 0:50 / {mountpoint} ro,nosuid - {fstype} {source} ro,user_id=0"
    return parse_mountinfo_line(line)


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("adler32=0a1b2c3d", {"adler32": "0a1b2c3d"}),
        ("ADLER32=A1B2C3", {"adler32": "00a1b2c3"}),
        (f"md5={MD5_B64}", {"md5": MD5_B64}),
        (f"MD5={MD5_HEX}", {"md5": MD5_B64}),
        (f"adler32=0000ffff, md5={MD5_B64}", {"adler32": "0000ffff", "md5": MD5_B64}),
        ("sha-256=abc, adler32=zz, md5=short, adler32=123456789", {}),
        ("", {}),
        ("adler32", {}),
    ],
)
def test_parse_digest(header: str, parsed: dict[str, str]) -> None:
    assert verify.parse_digest(header) == parsed


def test_want_digest_prefers_the_first() -> None:
    assert verify.want_digest(("adler32", "md5")) == "adler32, md5;q=0.5"
    assert verify.want_digest(("md5",)) == "md5"


def test_mount_of_picks_the_innermost_davfed_mount() -> None:
    entries = [entry("/", "ext4", "/dev/vda"), entry("/mnt/fed"), entry("/mnt/fed/x", "tmpfs")]
    assert verify.mount_of(Path("/mnt/fed/a/b"), entries) == entries[1]
    assert verify.mount_of(Path("/mnt/fed"), entries) == entries[1]
    assert verify.mount_of(Path("/mnt/federation/a"), entries) is None  # a prefix, not a parent
    assert verify.mount_of(Path("/mnt/fed/x/y"), entries) is None  # tmpfs on top of it
    assert verify.mount_of(Path("/etc/passwd"), entries) is None


def test_file_url_encodes_the_path() -> None:
    assert (
        verify.file_url("http://h:1/myfed/", "a b/c#d?.txt")
        == "http://h:1/myfed/a%20b/c%23d%3F.txt"
    )
    assert verify.file_url("http://h:1/myfed", "ü") == "http://h:1/myfed/%C3%BC"


def test_resolve_refuses_paths_outside_davfed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(UsageError, match="not in a davfed mount"):
        verify.resolve([str(tmp_path / "f")], [entry("/", "ext4", "/dev/vda")])
    with pytest.raises(UsageError, match="is a directory"):
        verify.resolve([str(tmp_path)], [entry(str(tmp_path))])
    with pytest.raises(UsageError, match="no such file"):
        verify.resolve([str(tmp_path / "missing")], [entry(str(tmp_path))])
    (target,) = verify.resolve([str(tmp_path / "f")], [entry(str(tmp_path))])
    assert target.url == "http://h/fed/f"


Handler = Callable[[httpx.Request], httpx.Response]


def federation(handler: Handler, headers: dict[str, str] | None = None) -> verify.Checksums:
    """Checksums asked through davfed's own Federation, its httpx client on a mock network."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    fed = Federation("http://fed/", client, federation_headers=lambda: dict(headers or {}))
    return verify.Checksums(fed)


async def test_redirect_walk_token_only_to_the_federation() -> None:
    seen: list[tuple[str, str, str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (
                request.method,
                str(request.url),
                request.headers.get("Authorization"),
                request.headers.get("Want-Digest"),
            )
        )
        if request.url.host == "fed":
            return httpx.Response(302, headers={"Location": "http://disk/ep0/f?sig=secret"})
        if request.method == "HEAD":
            return httpx.Response(403)  # signed for GET only
        return httpx.Response(200, headers={"Digest": "adler32=0A0B0C0D"}, content=b"body")

    fed = federation(handler, headers={"Authorization": "Bearer T"})
    offer = await fed.checksum("http://fed/myfed/f")
    await fed.federation.aclose()
    assert offer == verify.Offer("adler32", "0a0b0c0d", "from http://disk/ep0/f")
    assert seen == [
        ("HEAD", "http://fed/myfed/f", "Bearer T", "adler32, md5;q=0.5"),
        ("HEAD", "http://disk/ep0/f?sig=secret", None, "adler32, md5;q=0.5"),
        ("GET", "http://disk/ep0/f?sig=secret", None, "adler32, md5;q=0.5"),
    ]


async def test_no_plugin_is_no_checksum_and_failures_are_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/noplugin":
            return httpx.Response(400, text="No plugin can calculate a checksum")
        if path == "/loop":
            return httpx.Response(302, headers={"Location": "/loop2"})
        if path == "/loop2":
            return httpx.Response(302, headers={"Location": "/loop"})
        if path == "/ftp":
            return httpx.Response(302, headers={"Location": "ftp://x/y"})
        if path == "/gone":
            return httpx.Response(404)
        if path == "/nodigest":
            return httpx.Response(200)
        if path == "/sha":
            return httpx.Response(200, headers={"Digest": "sha-256=abc"})
        if path == "/md5":
            return httpx.Response(200, headers={"Digest": f"md5={MD5_HEX}"})
        raise httpx.ConnectError("refused", request=request)

    fed = federation(handler)
    assert (await fed.checksum("http://fed/noplugin")).algorithm is None
    assert (await fed.checksum("http://fed/nodigest")).algorithm is None
    assert (await fed.checksum("http://fed/sha")).algorithm is None
    assert await fed.checksum("http://fed/md5") == verify.Offer(
        "md5", MD5_B64, "from http://fed/md5"
    )
    for path, message in [
        ("/loop", "redirect loop"),
        ("/ftp", "'ftp' URL"),
        ("/gone", "answered 404"),
        ("/down", "ConnectError"),
    ]:
        with pytest.raises(verify.VerifyError, match=message):
            await fed.checksum("http://fed" + path)
    await fed.federation.aclose()


def test_local_checksum(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40000
    (tmp_path / "f").write_bytes(data)
    assert verify.local_checksum(tmp_path / "f", "adler32") == f"{zlib.adler32(data):08x}"
    assert (
        verify.local_checksum(tmp_path / "f", "md5")
        == base64.b64encode(hashlib.md5(data).digest()).decode()
    )
    with pytest.raises(verify.VerifyError, match="No such file"):
        verify.local_checksum(tmp_path / "missing", "md5")


def test_run_needs_paths() -> None:
    with pytest.raises(UsageError):
        verify.run([], out=io.StringIO())
