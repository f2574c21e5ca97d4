"""The operator's side of a running mount, started and stopped around the FUSE loop.

Owns: :func:`operator_services` (the control socket, the Prometheus server when
``metrics_addr=`` is set, the periodic summary line, the keeper of recent
warnings) and :func:`proxy_steering` (what ``davfed ctl proxy set`` does: probe
the new list the way a mount does, then switch the mount's proxy list, which the
transport and the metadata client follow, to it; on failure nothing changes).
Must not import: pyfuse3.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from davfed_fuse.config import Config
from davfed_fuse.daemon.control import Controls, Refused, serve_control
from davfed_fuse.daemon.metrics import start_metrics
from davfed_fuse.daemon.status import MountView, ProxyState
from davfed_fuse.errors import MountError
from davfed_fuse.net.proxies import ProxiesFailed, Proxy, describe, first_working
from davfed_fuse.net.proxylist import ProxyList

log = logging.getLogger(__name__)


def proxy_steering(
    state: ProxyState, probe: Callable[[Proxy], Awaitable[None]]
) -> Callable[[str], Awaitable[None]]:
    """The ``set_proxy`` of :class:`Controls` for this mount: probe the new list as a
    mount does, then hand it to the mount's :class:`ProxyList`, which the transport
    and the metadata client both follow; nothing changes when no proxy of it works."""
    lock = trio.Lock()

    async def set_proxy(spec: str) -> None:
        async with lock:
            try:
                candidate = ProxyList(spec, reset_after=state.proxies.reset_after)
            except ValueError as exc:
                raise Refused(f"proxy set: {exc}") from None
            try:
                chosen = await first_working(candidate.attempt_order(), probe)
            except ProxiesFailed as exc:
                kept = state.proxies.spec or "DIRECT"
                raise Refused(f"proxy set: kept {kept}: {exc}") from None
            previous = describe(state.proxies.current())
            state.proxies.set(spec)
            state.proxies.use(chosen)
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
