"""The control API: a small JSON-over-HTTP interface, on its own loopback port.

Owns: the routes below; each maps to one :class:`Controlled` method. A fault
call returns only once the fault is in effect.

==========================================  ==========================================
``GET  /info``                              the ready document (URL, endpoints, …)
``GET  /state``                             health and faults of every endpoint
``POST /faults`` ``{"endpoint", "kind", …}``  inject a fault (400 with ``error`` if bad)
``DELETE /faults[?endpoint=I]``             clear faults (all endpoints, or one)
``GET  /health/wait?endpoint=&online=&timeout=``  200 once flipped, 408 on timeout
``POST /health/check``                      run one checker round now; the online flags
``GET  /replica-url?endpoint=&path=``       a URL a client could GET directly (signed)
``GET  /bytes-sent?endpoint=``              body bytes served by the endpoint so far
``GET  /auth-rules``                        ``{"rules": [lines] | null}`` (null: no authorization)
``PUT  /auth-rules`` ``{"rules": [lines]}``   replace the authorization rules
==========================================  ==========================================
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from davfed_testfed.faults import FaultError


class Controlled(Protocol):
    def info(self) -> dict[str, Any]: ...
    def state(self) -> dict[str, Any]: ...
    async def add_fault(self, index: int, kind: str, params: dict[str, object]) -> None: ...
    async def clear_faults(self, index: int | None) -> None: ...
    async def wait_health(self, index: int, online: bool, timeout: float) -> bool: ...
    async def check_health(self) -> list[bool]: ...
    def replica_url(self, index: int, relpath: str) -> str: ...
    def bytes_sent(self, index: int) -> int: ...
    def endpoint_count(self) -> int: ...
    def auth_rules(self) -> list[str] | None: ...
    def set_auth_rules(self, lines: list[str]) -> None: ...


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _index(target: Controlled, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise FaultError(f"endpoint must be an index, not {raw!r}")
    try:
        index = int(raw)
    except ValueError:
        raise FaultError(f"endpoint must be an index, not {raw!r}") from None
    if not 0 <= index < target.endpoint_count():
        raise FaultError(f"no endpoint {index}")
    return index


def control_app(target: Controlled) -> web.Application:
    """The aiohttp application of the control API for ``target``."""
    routes = web.RouteTableDef()

    @routes.get("/info")
    async def info(request: web.Request) -> web.Response:
        return web.json_response(target.info())

    @routes.get("/state")
    async def state(request: web.Request) -> web.Response:
        return web.json_response(target.state())

    @routes.post("/faults")
    async def add_fault(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise FaultError("the body must be a JSON object")
            params = dict(body)
            index = _index(target, params.pop("endpoint", None))
            kind = params.pop("kind", None)
            if not isinstance(kind, str):
                raise FaultError("kind is missing")
            await target.add_fault(index, kind, params)
        except (FaultError, ValueError) as exc:
            return _bad(str(exc))
        return web.json_response({"ok": True})

    @routes.delete("/faults")
    async def clear(request: web.Request) -> web.Response:
        try:
            raw = request.query.get("endpoint")
            await target.clear_faults(None if raw is None else _index(target, raw))
        except FaultError as exc:
            return _bad(str(exc))
        return web.json_response({"ok": True})

    @routes.get("/health/wait")
    async def wait_health(request: web.Request) -> web.Response:
        try:
            index = _index(target, request.query.get("endpoint"))
            online = request.query.get("online", "true").lower() in ("1", "true", "yes")
            timeout = float(request.query.get("timeout", "5"))
        except (FaultError, ValueError) as exc:
            return _bad(str(exc))
        ok = await target.wait_health(index, online, timeout)
        return web.json_response({"ok": ok}, status=200 if ok else 408)

    @routes.post("/health/check")
    async def check_health(request: web.Request) -> web.Response:
        return web.json_response({"online": await target.check_health()})

    @routes.get("/replica-url")
    async def replica_url(request: web.Request) -> web.Response:
        try:
            index = _index(target, request.query.get("endpoint"))
        except FaultError as exc:
            return _bad(str(exc))
        path = request.query.get("path", "").strip("/")
        return web.json_response({"url": target.replica_url(index, path)})

    @routes.get("/bytes-sent")
    async def bytes_sent(request: web.Request) -> web.Response:
        try:
            index = _index(target, request.query.get("endpoint"))
        except FaultError as exc:
            return _bad(str(exc))
        return web.json_response({"bytes": target.bytes_sent(index)})

    @routes.get("/auth-rules")
    async def get_rules(request: web.Request) -> web.Response:
        return web.json_response({"rules": target.auth_rules()})

    @routes.put("/auth-rules")
    async def put_rules(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            lines = body.get("rules") if isinstance(body, dict) else None
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise FaultError('the body must be {"rules": [lines]}')
            target.set_auth_rules(lines)
        except (FaultError, ValueError) as exc:  # RulesError is a ValueError
            return _bad(str(exc))
        return web.json_response({"rules": target.auth_rules()})

    app = web.Application()
    app.add_routes(routes)
    return app
