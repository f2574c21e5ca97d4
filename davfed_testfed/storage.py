"""Storage endpoints served from Python: the signed-URL kinds and the nginx fault server.

Owns: :class:`EndpointInfo` (what the outside world knows of an endpoint), the
:class:`Endpoint` protocol the federation drives, :class:`SignedEndpoint` (an
aiohttp server per ``s3v2``/``s3v4``/``azure`` endpoint, checking pre-signed
URLs and answering with S3/Azure style XML errors), :class:`FaultServer` (the
server nginx endpoints ``proxy_pass`` a request to while a slow/stall/cut/status
fault applies to it) and :func:`send_file`, the body streamer both use, which
carries out a fault :class:`~davfed_testfed.faults.Effect`.

``candochecksum`` endpoints (``EndpointInfo.checksums``) answer a request that
carries ``Want-Digest`` with a ``Digest`` header of the whole file (RFC 3230,
``digests.py``); nginx endpoints hand such requests to the fault server, which
computes it.

Replica layout: the file ``a/b`` of the federation is ``/ep<i>/a/b`` on endpoint
``i`` (bucket or container ``ep<i>`` for the signed kinds).

Must not import: ``frontend``, ``server``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from davfed_testfed import digests, signing
from davfed_testfed.faults import Effect, FaultTable, resized_content
from davfed_testfed.namespace import relpath_of
from davfed_testfed.pages import APACHE_HTML, error_page
from davfed_testfed.ranges import Span, Unsatisfiable, decide_range
from davfed_testfed.validators import check_conditions, object_validators

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Header nginx adds when it proxies a request to the fault server.
ENDPOINT_HEADER = "X-Testfed-Endpoint"


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """One storage endpoint as clients and tests see it."""

    index: int
    kind: str  # "dav" | "s3v2" | "s3v4" | "azure"
    port: int  # where replica URLs point (the head node if there is a second hop)
    disk_port: int | None = None  # the "disk node" a head node redirects to
    access_log: Path | None = None  # nginx only: one line per request, bytes sent first
    address: str = "127.0.0.1"  # the IPv4 address it listens on
    checksums: bool = False  # candochecksum: answers Want-Digest with a Digest header

    @property
    def name(self) -> str:
        return f"ep{self.index}"

    @property
    def prefix(self) -> str:
        return f"/ep{self.index}"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}{self.prefix}/"

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "port": self.port,
            "disk_port": self.disk_port,
            "base_url": self.base_url,
            "access_log": str(self.access_log) if self.access_log else None,
            "candochecksum": self.checksums,
        }


class Endpoint(Protocol):
    """What the federation needs from an endpoint, whatever serves it."""

    info: EndpointInfo
    faults: FaultTable

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def set_down(self, down: bool) -> None: ...
    async def sync_faults(self) -> None:
        """Make the current fault table effective before returning."""

    def replica_url(self, relpath: str, now: float, validity: int) -> str: ...
    def check_url(self, now: float) -> str: ...
    def bytes_sent(self) -> int: ...


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port of ``address`` (default loopback) nobody listens on right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def accepting(address: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``address:port`` now."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for a server child: it gets SIGTERM when the federation dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def listen_socket(port: int, address: str = "127.0.0.1") -> socket.socket:
    """A listening socket on ``address:port`` (default loopback; port 0: any free port)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def replica_path(info: EndpointInfo, relpath: str) -> str:
    """The encoded URL path of ``relpath`` on endpoint ``info``."""
    return quote(f"{info.prefix}/{relpath}", safe="/")


class StallGate:
    """Released when faults are cleared, so stalled responses end (by closing)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    def release(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


def write_resized(source: Path, dest: Path, size: int | None, *, corrupt: bool = False) -> None:
    """Write the altered replica of ``source`` to ``dest`` (``size`` None: half the size;
    ``corrupt``: the same size, one byte of every MiB flipped)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if corrupt:
        shutil.copyfile(source, dest)
        with dest.open("r+b") as out:
            for offset in range(100, source.stat().st_size, 1 << 20):
                out.seek(offset)
                byte = out.read(1)
                out.seek(offset)
                out.write(bytes([byte[0] ^ 0xFF]))
        return
    original_size = source.stat().st_size
    new_size = original_size // 2 if size is None else size
    if new_size <= original_size:
        with source.open("rb") as src, dest.open("wb") as out:
            remaining = new_size
            while remaining:
                chunk = src.read(min(CHUNK, remaining))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
    else:
        shutil.copyfile(source, dest)
        with dest.open("ab") as out:
            out.write(resized_content(b"", new_size - original_size))


async def digest_headers(
    request: web.Request, source: Path, effect: Effect, enabled: bool
) -> dict[str, str]:
    """``{"Digest": "adler32=…"}`` if the endpoint can checksum and the client asked."""
    want = request.headers.get("Want-Digest")
    if not enabled or not want:
        return {}
    algorithm = digests.choose_algorithm(want)
    if algorithm is None:
        return {}
    value = await asyncio.to_thread(digests.file_digest, source, algorithm)
    if effect.bad_digest:
        value = digests.corrupt(value, algorithm)
    return {"Digest": digests.digest_header(algorithm, value)}


async def send_file(
    request: web.Request,
    path: Path,
    effect: Effect,
    gate: StallGate,
    count: Callable[[int], None],
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Stream ``path`` (single ``Range`` honoured, several ranges: full body) under ``effect``."""
    size = path.stat().st_size
    decision = decide_range(request.headers.get("Range"), size)
    base = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    base.update(headers or {})
    if isinstance(decision, Unsatisfiable):
        return web.Response(
            status=416, headers={**base, "Content-Range": f"bytes */{size}"}, body=b""
        )
    start, length, status = 0, size, 200
    if isinstance(decision, Span):
        start, length, status = decision.start, decision.length, 206
        base["Content-Range"] = decision.content_range(size)
    response = web.StreamResponse(status=status, headers=base)
    response.content_length = length
    try:
        return await _stream(request, response, path, start, length, effect, gate, count)
    except ConnectionResetError:
        raise asyncio.CancelledError from None  # the client left: end the handler quietly


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    path: Path,
    start: int,
    length: int,
    effect: Effect,
    gate: StallGate,
    count: Callable[[int], None],
) -> web.StreamResponse:
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    stop_after = effect.stall_after if effect.stall_after is not None else effect.cut_after
    loop = asyncio.get_running_loop()
    sent = 0
    with path.open("rb") as f:
        f.seek(start)
        while sent < length:
            n = min(CHUNK, length - sent)
            if stop_after is not None:
                n = min(n, stop_after - sent)
                if n <= 0:
                    break
            if effect.rate is not None:
                n = min(n, max(1, effect.rate // 10))
            chunk = await loop.run_in_executor(None, f.read, n)
            if not chunk:
                break
            await response.write(chunk)
            sent += len(chunk)
            count(len(chunk))
            if effect.rate is not None:
                await asyncio.sleep(len(chunk) / effect.rate)
    if sent < length:
        if effect.stall_after is not None:
            await gate.wait()
        transport = request.transport
        if transport is not None:
            transport.close()  # flushes what was written, then FIN: a truncated body
        raise asyncio.CancelledError  # aiohttp ends the handler quietly
    await response.write_eof()
    return response


# --- signed-URL endpoints -------------------------------------------------------------------


def s3_error(status: int, code: str, message: str, resource: str = "") -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>testfed</RequestId></Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def azure_error(status: int, code: str, message: str) -> web.Response:
    text, _, detail = message.partition("|")
    detail_xml = (
        f"<AuthenticationErrorDetail>{escape(detail)}</AuthenticationErrorDetail>" if detail else ""
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(text)}\n"
        f"RequestId:testfed\nTime:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        f"</Message>{detail_xml}</Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


class SignedEndpoint:
    """An S3 (SigV2 or SigV4) or Azure blob endpoint accepting only pre-signed URLs."""

    def __init__(
        self,
        info: EndpointInfo,
        data_dir: Path,
        work_dir: Path,
        creds: signing.Credentials,
    ) -> None:
        self.info = info
        self.faults = FaultTable()
        self._data_dir = data_dir
        self._resized_dir = work_dir / "resized"
        self._creds = creds
        self._gate = StallGate()
        self._runner: web.AppRunner | None = None
        self._bytes = 0

    @property
    def kind(self) -> signing.SignedKind:
        kind = self.info.kind
        assert kind in signing.SIGNED_KINDS
        return kind

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._server_header)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.SockSite(runner, listen_socket(self.info.port, self.info.address)).start()
        self._runner = runner

    async def _server_header(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = (
            "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"
            if self.info.kind == "azure"
            else "AmazonS3"
        )

    async def stop(self) -> None:
        self._gate.release()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def set_down(self, down: bool) -> None:
        if down:
            await self.stop()
        elif self._runner is None:
            await self.start()

    async def sync_faults(self) -> None:
        for fault in self.faults.faults():
            if fault.kind in ("resize", "corrupt") and fault.path is not None:
                dest = self._resized_dir / fault.path
                await asyncio.to_thread(
                    write_resized,
                    self._data_dir / fault.path,
                    dest,
                    fault.size,
                    corrupt=fault.kind == "corrupt",
                )
        if not any(f.kind == "stall" for f in self.faults.faults()):
            self._gate.release()

    def replica_url(self, relpath: str, now: float, validity: int) -> str:
        path = replica_path(self.info, relpath)
        query = signing.sign(self.kind, "GET", path, self.info.host, now, validity, self._creds)
        return f"http://{self.info.host}{path}?{query}"

    def check_url(self, now: float) -> str:
        path = f"{self.info.prefix}/"
        query = signing.sign(self.kind, "HEAD", path, self.info.host, now, 300, self._creds)
        return f"http://{self.info.host}{path}?{query}"

    def bytes_sent(self) -> int:
        return self._bytes

    def _count(self, n: int) -> None:
        self._bytes += n

    def _error(self, status: int, code: str, message: str, resource: str) -> web.Response:
        if self.info.kind == "azure":
            return azure_error(status, code, message)
        return s3_error(status, code, message, resource)

    def _check_signature(self, request: web.Request) -> signing.SignatureProblem | None:
        raw_path = request.rel_url.raw_path
        query = {k: v for k, v in request.query.items()}
        now = time.time()
        if self.info.kind == "s3v2":
            problem = signing.verify_s3v2(request.method, raw_path, query, now, self._creds)
            if problem is not None and request.method == "HEAD":
                # Deliberately lenient (only s3v4 refuses it): HEAD on a URL signed for GET.
                problem = signing.verify_s3v2("GET", raw_path, query, now, self._creds)
            return problem
        if self.info.kind == "s3v4":
            host = request.headers.get("Host", "")
            return signing.verify_s3v4(request.method, raw_path, host, query, now, self._creds)
        return signing.verify_azure(raw_path, query, now, self._creds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resource = request.path
        relpath = relpath_of(self.info.prefix, request.path)
        effect = self.faults.effect(relpath or "")
        if effect.delay:
            await asyncio.sleep(effect.delay)
        if effect.status is not None:
            return self._error(effect.status, "ServiceUnavailable", "Injected fault", resource)
        if request.method not in ("GET", "HEAD"):
            return self._error(
                405, "MethodNotAllowed", "The specified method is not allowed", resource
            )
        if self.info.kind != "azure" and "Authorization" in request.headers:
            return self._error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified",
                resource,
            )
        problem = self._check_signature(request)
        if problem is not None:
            return self._error(problem.status, problem.code, problem.message, resource)
        if relpath is None:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist", "")
        if relpath == "":
            return web.Response(status=200, content_type="application/xml", body=b"")
        source = self._data_dir / relpath
        if effect.resized:
            source = self._resized_dir / relpath
        if effect.deleted or not source.is_file():
            if self.info.kind == "azure":
                return self._error(404, "BlobNotFound", "The specified blob does not exist.", "")
            return self._error(404, "NoSuchKey", "The specified key does not exist.", resource)
        validators = object_validators(source)
        precondition = check_conditions(request.headers, validators)
        if precondition is not None:
            return web.Response(status=precondition, headers=validators)
        extra = await digest_headers(request, source, effect, self.info.checksums)
        return await send_file(
            request, source, effect, self._gate, self._count, {**validators, **extra}
        )


# --- the fault server behind the nginx endpoints --------------------------------------------


class FaultServer:
    """Serves the requests nginx endpoints hand over while a proxied fault applies.

    nginx proxies with the original URI and an ``X-Testfed-Endpoint: <i>`` header;
    this server looks the endpoint's faults up and serves the file under them.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._tables: dict[int, tuple[FaultTable, Path, StallGate]] = {}
        self._checksums: set[int] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def register(
        self,
        index: int,
        table: FaultTable,
        resized_dir: Path,
        gate: StallGate,
        checksums: bool = False,
    ) -> None:
        self._tables[index] = (table, resized_dir, gate)
        if checksums:
            self._checksums.add(index)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        sock = listen_socket(0)
        self.port = int(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def stop(self) -> None:
        for _, _, gate in self._tables.values():
            gate.release()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            index = int(request.headers[ENDPOINT_HEADER])
            table, resized_dir, gate = self._tables[index]
        except (KeyError, ValueError):
            return web.Response(status=400, text="not an nginx endpoint request\n")
        relpath = relpath_of(f"/ep{index}", request.path)
        if relpath is None:
            return _nginx_error(404)
        effect = table.effect(relpath)
        if effect.delay:
            await asyncio.sleep(effect.delay)
        if effect.status is not None:
            return _nginx_error(effect.status)
        source = (resized_dir / relpath) if effect.resized else (self._data_dir / relpath)
        if relpath == "" or source.is_dir():
            return web.Response(status=200, content_type="text/html", body=b"")
        if effect.deleted or not source.is_file():
            return _nginx_error(404)
        if request.method not in ("GET", "HEAD"):
            return _nginx_error(405)
        mtime = os.stat(source).st_mtime
        headers = {"Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime))}
        headers.update(await digest_headers(request, source, effect, index in self._checksums))
        return await send_file(
            request,
            source,
            effect,
            gate,
            lambda n: None,  # nginx's access log counts these bytes
            headers,
        )


def _nginx_error(status: int) -> web.Response:
    return web.Response(
        status=status,
        body=error_page(status, "testfed injected fault"),
        headers={"Content-Type": APACHE_HTML},
    )
