"""The operator's side of a running mount, started and stopped around the FUSE loop.

Owns: :func:`operator_services` (the control socket, the Prometheus server when
``metrics_addr=`` is set, the periodic summary line, the keeper of recent
warnings) and :func:`proxy_steering` (what ``davfed ctl proxy set`` does: probe
the new list the way a mount does, then switch the transport and the metadata
client to the first proxy that works; on failure nothing changes).
Must not import: pyfuse3.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import trio

from davfed_fuse.config import Config
from davfed_fuse.daemon.control import Controls, Refused, serve_control
from davfed_fuse.daemon.metrics import start_metrics
from davfed_fuse.daemon.status import MountView, ProxyState
from davfed_fuse.errors import MountError
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.proxies import ProxiesFailed, Proxy, describe, first_working, proxy_order
from davfed_fuse.net.transport import Transport

log = logging.getLogger(__name__)


def proxy_steering(
    state: ProxyState,
    probe: Callable[[Proxy], Awaitable[None]],
    transport: Transport,
    federation: Federation,
    make_client: Callable[[Proxy], httpx.AsyncClient],
    retired: contextlib.AsyncExitStack,
) -> Callable[[str], Awaitable[None]]:
    """The ``set_proxy`` of :class:`Controls` for this mount."""
    lock = trio.Lock()

    async def set_proxy(spec: str) -> None:
        async with lock:
            order = proxy_order(spec)
            try:
                chosen = await first_working(order, probe)
            except ProxiesFailed as exc:
                raise Refused(f"proxy set: kept {state.spec or 'DIRECT'}: {exc}") from None
            transport.set_proxy(chosen)
            old = federation.replace_client(make_client(chosen))
            retired.push_async_callback(old.aclose)  # its running requests finish first
            previous = describe(state.in_use)
            state.spec, state.in_use, state.order = spec, chosen, order
            state.changed_at = time.time()
            log.warning(
                "proxy list set to %s by davfed ctl; using %s (was %s)",
                spec,
                describe(chosen),
                previous,
            )

    return set_proxy


async def _summaries(view: MountView, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        log.info(view.summary(), extra={"event.dataset": "davfed.stats"})


@contextlib.asynccontextmanager
async def operator_services(
    config: Config,
    view: MountView,
    set_proxy: Callable[[str], Awaitable[None]],
    nursery: trio.Nursery,
) -> AsyncIterator[None]:
    """Run the control socket, metrics and summaries in ``nursery`` while inside.

    A metrics address that cannot be bound is a mount error (the operator asked for
    it); a control socket that cannot be made is a warning (the mount still works).
    """
    logging.getLogger().addHandler(view.warnings)
    server = None
    try:
        if config.metrics_addr:
            try:
                server = start_metrics(view, config.metrics_addr)
            except OSError as exc:
                raise MountError(
                    f"metrics_addr={config.metrics_addr}: cannot listen: {exc.strerror}"
                ) from None
        if view.control_socket is not None:
            controls = Controls(view=view, set_proxy=set_proxy)
            try:
                await nursery.start(serve_control, controls, view.control_socket)
            except OSError as exc:
                log.warning("no control socket %s: %s", view.control_socket, exc)
                view.control_socket = None
        if config.stats_interval > 0:
            nursery.start_soon(_summaries, view, config.stats_interval)
        yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        logging.getLogger().removeHandler(view.warnings)
