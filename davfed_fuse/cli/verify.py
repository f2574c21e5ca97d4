"""``davfed verify PATH...``: compare a file read through davfed with the federation's checksum.

Owns: finding the davfed mount a path is on (and the federation URL of the
file, from the mount's source), asking the federation for the file's checksum
the way davix does (``HEAD`` with ``Want-Digest``, redirects followed by hand:
Dynafed redirects such a request to a replica on a ``candochecksum`` endpoint,
which answers with an RFC 3230 ``Digest: adler32=<hex>`` or ``md5=<base64>``),
computing the same checksum over the file read through the mount (so the bytes
come from davfed's cache, fetching what is missing) and comparing the two.

One line per file on stdout: ``OK``, ``MISMATCH``, ``NO CHECKSUM offered`` or
``ERROR`` (the federation or the file could not be read). Exit status: 0 every
file OK or without a checksum, 1 usage error (a path that is not a file in a
davfed mount), 2 a mismatch, 3 an error and no mismatch.

The federation is asked through davfed's own :class:`~davfed_fuse.net.federation.Federation`
(its one redirect loop, its credential rule and its error table), in a short trio run.
Credentials: the same discovery as a mount's defaults (``credentials.discover``
from the environment); a bearer token goes to the federation only, never to a
replica it redirects to. Must not import: pyfuse3, the daemon, the cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote, urlsplit

import trio

from davfed_fuse.cli.parser import UsageParser
from davfed_fuse.errors import DavfedError, UsageError
from davfed_fuse.exitcodes import Exit
from davfed_fuse.net.credentials import Credentials, TLSGeneration, discover
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.httpclient import metadata_client
from davfed_fuse.system.mounttable import MountEntry, containing_mount, read_mountinfo

log = logging.getLogger(__name__)

#: Algorithms davfed can compute, in Want-Digest preference order (Dynafed/DPM: adler32).
ALGORITHMS = ("adler32", "md5")
MAX_REDIRECTS = 10
CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class Target:
    """A file to verify: where it is mounted and where the federation has it."""

    path: Path
    mount: MountEntry
    url: str


@dataclass(frozen=True, slots=True)
class Offer:
    """What the federation answered: a checksum, or why there is none."""

    algorithm: str | None  # None: no checksum offered
    value: str = ""  # normalised: lowercase hex (adler32), base64 (md5)
    detail: str = ""  # where it came from, or why there is none


class VerifyError(Exception):
    """The checksum could not be obtained or computed (not a mismatch)."""


# --- the path and its URL -------------------------------------------------------------------


def mount_of(path: Path, entries: Sequence[MountEntry]) -> MountEntry | None:
    """The topmost davfed mount whose mountpoint contains ``path`` (already resolved)."""
    found = containing_mount(path, entries)
    return found if found is not None and found.is_davfed else None


def file_url(base: str, relpath: str) -> str:
    """The federation URL of ``relpath`` under the mount's URL (percent-encoded)."""
    return base.rstrip("/") + "/" + quote(relpath, safe="/")


def resolve(paths: Sequence[str], entries: Sequence[MountEntry] | None = None) -> list[Target]:
    """Every path as a :class:`Target`.

    Raises:
        UsageError: a path does not exist, is not a regular file, or is not in a davfed mount.
    """
    if entries is None:
        entries = read_mountinfo()
    targets = []
    for raw in paths:
        path = Path(os.path.realpath(raw))
        entry = mount_of(path, entries)
        if entry is None:
            raise UsageError(f"{raw}: not in a davfed mount")
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "no such file"
            raise UsageError(f"{raw}: {what}")
        relpath = os.path.relpath(path, entry.mountpoint)
        targets.append(Target(path, entry, file_url(entry.source, relpath)))
    return targets


# --- the federation's checksum ----------------------------------------------------------------


def parse_digest(header: str) -> dict[str, str]:
    """RFC 3230 ``Digest: adler32=0a1b2c3d, md5=…`` → ``{"adler32": "0a1b2c3d", …}``.

    Algorithm names are lowercased; adler32 values are normalised to 8 lowercase hex
    digits, md5 values to base64 (a 32-digit hex md5, as some servers send, is
    converted). Values that cannot be right are dropped.
    """
    found: dict[str, str] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if not sep or not value:
            continue
        if name == "adler32":
            try:
                number = int(value, 16)
            except ValueError:
                continue
            if 0 <= number <= 0xFFFFFFFF:
                found[name] = f"{number:08x}"
        elif name == "md5":
            raw = _md5_bytes(value)
            if raw is not None:
                found[name] = base64.b64encode(raw).decode("ascii")
    return found


def _md5_bytes(value: str) -> bytes | None:
    if len(value) == 32:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 16 else None


def want_digest(algorithms: Sequence[str]) -> str:
    """``adler32, md5;q=0.5``: the first is preferred."""
    parts = [algorithms[0]]
    parts += [f"{name};q={0.5 / i:.2g}" for i, name in enumerate(algorithms[1:], start=1)]
    return ", ".join(parts)


class Checksums:
    """Asks a federation for its files' checksums (through davfed's own :class:`Federation`)."""

    def __init__(self, federation: Federation, algorithms: Sequence[str] = ALGORITHMS) -> None:
        self.federation = federation
        self.algorithms = tuple(algorithms)

    async def checksum(self, url: str) -> Offer:
        """The checksum the federation offers for the file at ``url``.

        Raises:
            VerifyError: the federation or the replica failed (network, 404, 5xx, loops).
        """
        headers = {"Want-Digest": want_digest(self.algorithms)}
        try:
            answer = await self.federation.head(url, headers, max_redirects=MAX_REDIRECTS)
        except DavfedError as exc:
            raise VerifyError(str(exc)) from None
        where = _where(answer.url)
        if answer.status == 400 and answer.hops == 0:
            # Dynafed: "No plugin can calculate a checksum" (no candochecksum endpoint)
            return Offer(
                None,
                detail="the federation answered 400: no endpoint can compute a checksum",
            )
        if not 200 <= answer.status < 300:
            raise VerifyError(f"{where} answered {answer.status} {answer.reason}")
        offered = parse_digest(answer.headers.get("Digest", ""))
        for name in self.algorithms:
            if name in offered:
                return Offer(name, offered[name], f"from {where}")
        return Offer(None, detail=f"{where} sent no usable Digest header")


def _where(url: str) -> str:
    """Scheme, host and path of ``url``: never a signed query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --- the file through the mount -----------------------------------------------------------------


def local_checksum(path: Path, algorithm: str) -> str:
    """``algorithm`` over the file read through the mount, in :func:`parse_digest`'s encoding.

    Raises:
        VerifyError: the file could not be read (the errno is in the message).
    """
    try:
        with path.open("rb", buffering=0) as f:
            if algorithm == "adler32":
                value = 1
                while chunk := f.read(CHUNK):
                    value = zlib.adler32(chunk, value)
                return f"{value & 0xFFFFFFFF:08x}"
            md5 = hashlib.md5(usedforsecurity=False)
            while chunk := f.read(CHUNK):
                md5.update(chunk)
            return base64.b64encode(md5.digest()).decode("ascii")
    except OSError as exc:
        raise VerifyError(f"reading through the mount: {exc.strerror or exc}") from None


# --- the command ------------------------------------------------------------------------------


def _credentials() -> Credentials | None:
    """The credential of davfed's discovery from the environment (best effort)."""
    try:
        creds = Credentials.create(discover(), None)
        creds.refresh()
        creds.headers()  # fails now if it is unusable, not at the first request
        return creds
    except (OSError, ValueError, ssl.SSLError, DavfedError) as exc:
        log.warning("no credentials for verify (%s); asking anonymously", exc)
        return None


def federation_for(base_url: str, timeout: float, credentials: Credentials | None) -> Federation:
    """A :class:`Federation` for ``base_url`` whose requests each get ``timeout`` seconds."""
    client = metadata_client(
        TLSGeneration(credentials), timeout=timeout, connect_timeout=timeout, connections=1
    )
    return Federation(
        base_url,
        client,
        federation_headers=credentials.headers if credentials is not None else None,
        budget=timeout * (MAX_REDIRECTS + 1),
    )


async def check(
    targets: Sequence[Target], checksums: Callable[[str], Checksums], out: TextIO
) -> int:
    """Verify ``targets``; print one line per file; return the exit status.

    ``checksums(base_url)`` gives the checksum source of a mount's federation.
    """
    sources: dict[str, Checksums] = {}
    mismatches = errors = 0
    try:
        for target in targets:
            shown = os.fspath(target.path)
            source = target.mount.source
            if source not in sources:
                sources[source] = checksums(source)
            try:
                offer = await sources[source].checksum(target.url)
                if offer.algorithm is None:
                    print(f"NO CHECKSUM offered  {shown} ({offer.detail})", file=out, flush=True)
                    continue
                mine = await trio.to_thread.run_sync(local_checksum, target.path, offer.algorithm)
            except VerifyError as exc:
                errors += 1
                print(f"ERROR     {shown}: {exc}", file=out, flush=True)
                continue
            if mine == offer.value:
                print(f"OK        {shown} {offer.algorithm}={mine}", file=out, flush=True)
            else:
                mismatches += 1
                print(
                    f"MISMATCH  {shown} {offer.algorithm}: federation {offer.value}, "
                    f"read through davfed {mine} ({offer.detail})",
                    file=out,
                    flush=True,
                )
    finally:
        for used in sources.values():
            await used.federation.aclose()
    if mismatches:
        return Exit.FAILED
    return Exit.ERROR if errors else Exit.OK


def run(
    paths: Sequence[str],
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    timeout: float = 30.0,
    out: TextIO | None = None,
    checksums: Callable[[str], Checksums] | None = None,
) -> int:
    """Verify ``paths``; print one line per file; return the exit status.

    Raises:
        UsageError: no path, or a path that is not a file in a davfed mount.
    """
    out = out or sys.stdout
    if not paths:
        raise UsageError("davfed verify: give at least one file")
    targets = resolve(paths)
    if checksums is None:
        credentials = _credentials()

        def checksums(base_url: str) -> Checksums:
            return Checksums(federation_for(base_url, timeout, credentials), algorithms)

    return trio.run(check, targets, checksums, out)


def main(argv: Sequence[str]) -> int:
    """``davfed verify [--algorithm A] [--timeout S] PATH...``."""
    parser = UsageParser(
        prog="davfed verify",
        description="Compare files read through a davfed mount with the checksum the "
        "federation offers (HEAD with Want-Digest; Dynafed redirects it to a replica that "
        "can compute one). One line per file: OK, MISMATCH, NO CHECKSUM offered or ERROR.",
        epilog="Exit status: 0 all OK (or no checksum offered), 1 usage error, 2 a mismatch, "
        "3 a file could not be verified (and no mismatch).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files in a davfed mount")
    parser.add_argument(
        "-a",
        "--algorithm",
        choices=ALGORITHMS,
        help="ask for this checksum only (default: adler32, else md5)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline of each HTTP request (default: %(default)s)",
    )
    args = parser.parse_args(list(argv))
    if args.timeout <= 0:
        raise UsageError("davfed verify: --timeout must be positive")
    algorithms = (args.algorithm,) if args.algorithm else ALGORITHMS
    return run(args.paths, algorithms=algorithms, timeout=args.timeout)
