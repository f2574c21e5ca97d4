"""The mount daemon: one trio run that serves one FUSE mount.

Owns: the lifecycle of a mount, as one ``async with`` tree: the HTTP client,
the first request to the federation (the mount fails before anything is
mounted if the federation cannot be reached), ``pyfuse3.init``, the readiness
report, the signal watcher, and the unmount, which always runs last.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import random
import signal
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pyfuse3
import trio

from davfed_fuse import __version__
from davfed_fuse.cache.blockcache import BlockCache, CacheError, CacheLocked
from davfed_fuse.config import Config
from davfed_fuse.daemon.handlers import Attributes, DavfedOperations
from davfed_fuse.daemon.namespace import Namespace
from davfed_fuse.daemon.openfiles import Readers, cache_root
from davfed_fuse.daemon.services import operator_services, proxy_steering
from davfed_fuse.daemon.status import MountView, ProxyState, cache_counters
from davfed_fuse.daemon.telemetry import Telemetry, WarningKeeper
from davfed_fuse.errors import DavfedError, Forbidden, MountError, NotFound
from davfed_fuse.exitcodes import Exit
from davfed_fuse.net.credentials import Credentials, TLSGeneration, discover, searched
from davfed_fuse.net.federation import Federation
from davfed_fuse.net.httpclient import metadata_client
from davfed_fuse.net.proxies import ProxiesFailed, Proxy, proxy_spec
from davfed_fuse.net.proxylist import ProxyList, choose_first_working, return_to_first_group
from davfed_fuse.net.replicachoice import ReplicaChoice
from davfed_fuse.net.replicas import backoff
from davfed_fuse.net.transport import MAX_FILL_WAIT, Transport
from davfed_fuse.net.webdav import RemoteEntry
from davfed_fuse.system.control import socket_path
from davfed_fuse.system.fusermount import capture_stderr, fuse_reason
from davfed_fuse.system.mounttable import find_mount

log = logging.getLogger(__name__)


class Readiness:
    """Reports once, to the launcher's pipe and to systemd, that the mount is live or failed."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.write(fd, line.encode(errors="replace") + b"\n")
        except OSError:
            pass
        finally:
            os.close(fd)

    def ready(self, status: str) -> None:
        self._send("READY")
        sd_notify("READY=1", f"STATUS={status}")

    def failed(self, message: str) -> None:
        self._send("ERROR " + " ".join(message.split()))
        sd_notify(f"STATUS=mount failed: {message}")


def sd_notify(*assignments: str) -> None:
    """Send ``assignments`` (``READY=1``, ``STATUS=...``) to systemd as one datagram.

    sd_notify(3)'s protocol: newline-separated ``KEY=VALUE`` in one datagram to the
    ``AF_UNIX``/``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``: an absolute path,
    or an abstract name when it starts with ``@``. Nothing to do when it is unset
    (not a ``Type=notify`` service); a send that fails is logged, never fatal.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("cannot notify systemd: NOTIFY_SOCKET=%r is not a unix socket", address)
        return
    message = "\n".join(" ".join(a.split()) for a in assignments).encode(errors="replace")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message, address)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)


def fuse_options(config: Config) -> set[str]:
    """The option strings handed to libfuse for ``config``."""
    fsname = config.url.replace("\\", "\\\\").replace(",", "\\,")
    options = {f"fsname={fsname}", "subtype=davfed", "ro"}
    for flag in ("nosuid", "nodev", "noexec"):
        if getattr(config, flag):
            options.add(flag)
    if config.allow_other:
        options.add("allow_other")
    elif config.allow_root:
        options.add("allow_root")
    if config.default_permissions:
        options.add("default_permissions")
    return options | set(config.extra_fuse_options)


async def _stat_root(federation: Federation, config: Config) -> RemoteEntry:
    """PROPFIND the federation root, with a few retries for transient failures."""
    for attempt in range(config.retries + 1):
        try:
            return await federation.stat("")
        except (NotFound, Forbidden):
            raise
        except DavfedError as exc:
            if attempt == config.retries:
                raise
            delay = backoff(attempt + 1, base=0.2)
            log.info("federation not answering (%s), retrying in %.1f s", exc, delay)
            await trio.sleep(delay)
    raise AssertionError("unreachable")


#: mallopt(3)'s parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8

#: The kernel's read-ahead for the mount; it sets the size of FUSE read requests
#: (128 KiB by default, 1 MiB is the most libfuse negotiates).
KERNEL_READAHEAD_KB = 1024


def mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the topmost mount at the already resolved ``mountpoint``.

    Never ``stat`` (or ``realpath``) our own mountpoint from the daemon: that is
    a FUSE request to ourselves, and it would hang before the request loop runs.
    """
    entry = find_mount(mountpoint, resolve=False)
    return entry.device if entry is not None else None


def raise_kernel_readahead(mountpoint: Path, kilobytes: int = KERNEL_READAHEAD_KB) -> None:
    """Let the kernel send large reads: set the mount's bdi ``read_ahead_kb``."""
    device = mount_device(mountpoint)
    if device is None:
        log.warning("cannot find %s in mountinfo; kernel read-ahead left as is", mountpoint)
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kilobytes}\n")
    except OSError as exc:
        log.info("cannot raise the kernel read-ahead of %s: %s", mountpoint, exc)


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce(config: Config, mountpoint: Path, readiness: Readiness) -> None:
    """Once the kernel has finished FUSE_INIT, tune the mount and report it live.

    A ``stat`` of the mountpoint from a thread goes through the kernel to our
    own ``getattr``, so when it returns the mount is served end to end. The
    kernel applies its read-ahead at INIT, so ours is set after that.
    """
    with trio.fail_after(config.mount_timeout):
        await trio.to_thread.run_sync(os.stat, mountpoint)
    raise_kernel_readahead(mountpoint)
    log.info("mounted %s on %s", config.url, mountpoint)
    readiness.ready(f"mounted {config.url} on {mountpoint}")


def credentials_for(config: Config) -> Credentials:
    """The mount's credential, found and checked (MountError with the reason if unusable)."""
    credential = discover(
        x509_proxy=config.x509_proxy,
        x509_cert=config.x509_cert,
        x509_key=config.x509_key,
        token_file=config.token_file,
    )
    credentials = Credentials.create(credential, config.capath)
    credentials.check()
    log.info("credential: %s", credentials.describe())
    return credentials


def proxy_probe(config: Config, credentials: Credentials) -> Callable[[Proxy], Awaitable[None]]:
    """A probe of one proxy: a real request to the federation (PROPFIND of its root)
    through it. Raises if the federation does not answer through it."""

    async def probe(proxy: Proxy) -> None:
        async with http_client(config, credentials, 1, proxy) as client:
            federation = Federation(config.url, client, federation_headers=credentials.headers)
            # NotFound or Forbidden: the federation answered, so the proxy works.
            with (
                trio.fail_after(config.connect_timeout + config.timeout),
                contextlib.suppress(NotFound, Forbidden),
            ):
                await federation.stat("")

    return probe


async def choose_proxy(config: Config, credentials: Credentials) -> ProxyList | None:
    """The mount's proxy list, on the first proxy through which the federation answers.

    None (DIRECT) when there is no list; MountError when no proxy of it works.
    """
    spec = proxy_spec(config.proxy, config.url, os.environ)
    if spec is None:
        return None
    try:
        proxies = ProxyList(spec, reset_after=config.proxy_reset_after)
    except ValueError as exc:
        raise MountError(f"proxy list {spec!r}: {exc}") from None
    try:
        await choose_first_working(proxies, proxy_probe(config, credentials))
    except ProxiesFailed as exc:
        raise MountError(f"{config.url}: {exc}") from None
    return proxies


async def startup_delay(config: Config) -> None:
    """Wait a random 0..startup_jitter seconds: VMs booting together spread their first
    requests over that time instead of hitting the federation in the same second."""
    if config.startup_jitter > 0:
        delay = random.uniform(0.0, config.startup_jitter)
        log.info("start-up jitter: first request in %.2f s", delay)
        await trio.sleep(delay)


def http_client(
    config: Config,
    credentials: Credentials,
    connections: int,
    proxy: Proxy = None,
    proxies: ProxyList | None = None,
) -> httpx.AsyncClient:
    """The mount's httpx client for metadata (see :func:`metadata_client`)."""
    return metadata_client(
        TLSGeneration(credentials),
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
        connections=connections,
        proxy=proxy,
        proxies=proxies,
        user_agent=f"davfed/{__version__}",
    )


def open_cache(config: Config, root: Path) -> BlockCache | None:
    """The mount's block cache, or None with ``cache_size=0`` (reads go straight through)."""
    if config.cache_size == 0:
        return None
    try:
        cache = BlockCache(
            root,
            max_bytes=config.cache_size,
            block_size=config.block_size,
            max_fetches=config.max_connections,
            # A reader's read-ahead, its current block and one more fetch run.
            max_fresh_bytes=config.readahead + 4 * config.block_size,
            min_free=config.cache_min_free,
        )
        if (warning := cache.capacity_warning()) is not None:
            log.warning("%s", warning)
        return cache
    except CacheLocked:
        raise MountError(f"cache directory {root} is in use by another davfed mount") from None
    except (OSError, sqlite3.Error) as exc:
        raise MountError(f"cannot open the cache in {root}: {exc}") from exc
    except CacheError as exc:  # e.g. a cache directory others can read, not ours to fix
        raise MountError(str(exc)) from None


async def serve(config: Config, readiness: Readiness) -> None:
    """Mount, serve until unmounted or signalled, unmount.

    Teardown runs in reverse: the kernel mount goes first, then the read-ahead
    tasks, the HTTP connections and the cache index.
    """
    mountpoint = Path(config.mountpoint).resolve()
    telemetry = Telemetry()
    with contextlib.ExitStack() as stack:
        cache = open_cache(config, cache_root(config.cache_dir, config.url))
        if cache is not None:
            stack.callback(cache.close)
        credentials = credentials_for(config)
        await startup_delay(config)
        configured = await choose_proxy(config, credentials)
        # Always a list (DIRECT when none was given), so that `davfed ctl proxy set`
        # can steer a mount at run time, as `cvmfs_talk proxy set` does.
        proxies = configured or ProxyList("DIRECT", reset_after=config.proxy_reset_after)
        connections = config.max_connections + 2
        async with http_client(config, credentials, connections, proxies=proxies) as client:
            # A FUSE request may try two replicas, each within the per-operation deadlines.
            budget = 2 * (config.timeout + config.connect_timeout)
            transport = Transport(
                tls=TLSGeneration(credentials),
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
                connections=config.max_connections + 2,
                proxies=proxies,
                fill_rate=config.proxy_fill_rate,
                user_agent=f"davfed/{__version__}",
            )
            stack.callback(transport.close)
            federation = Federation(
                config.url,
                client,
                transport=transport,
                federation_headers=credentials.headers,
                budget=budget,
                retries=config.retries,
                observer=telemetry,
            )
            try:
                await _check_root(federation, config)
            except MountError as exc:
                if credentials.credential is None and isinstance(exc.__cause__, Forbidden):
                    raise MountError(
                        f"{exc}; no credential found (looked for {searched()})"
                    ) from exc
                raise
            namespace = Namespace(
                federation,
                attr_timeout=config.attr_timeout,
                dir_timeout=config.dir_timeout,
                negative_timeout=config.negative_timeout,
                clock=time.monotonic,
            )
            attributes = Attributes(
                uid=config.uid,
                gid=config.gid,
                file_mode=config.file_mode,
                dir_mode=config.dir_mode,
                attr_timeout=config.attr_timeout,
                entry_timeout=config.entry_timeout,
            )
            limiter = trio.CapacityLimiter(config.max_connections)
            proxy_state = ProxyState(proxies)
            view = MountView(
                url=config.url,
                mountpoint=mountpoint,
                telemetry=telemetry,
                warnings=WarningKeeper(),
                federation=federation,
                credentials=credentials,
                proxy=proxy_state,
                cache=cache,
                open_files=lambda: operations.open_files(),
                control_socket=socket_path(str(mountpoint), os.geteuid()),
            )
            probe = proxy_probe(config, credentials)
            set_proxy = proxy_steering(proxy_state, probe)
            async with trio.open_nursery() as nursery:  # owns the read-ahead tasks
                choice = replica_choice(config, federation, nursery)
                readers = Readers(federation, cache, nursery, limiter, config.readahead, choice)
                # A request may wait for another reader's fetch, then fetch itself
                # (through a filling cache: its first byte may wait longer).
                fill_wait = MAX_FILL_WAIT if configured is not None else 0.0
                operations = DavfedOperations(
                    namespace,
                    attributes,
                    readers,
                    request_timeout=2 * budget + fill_wait,
                    other_tables=lambda: {
                        "readers": readers.alive(),
                        "remembered_targets": federation.remembered_targets(),
                        **(choice.counts() if choice is not None else {}),
                    },
                    view=view,
                    cold_mark=None if cache is None else lambda: cache_counters(cache).misses,
                )
                try:
                    with capture_stderr() as fusermount:  # it says why, on stderr
                        pyfuse3.init(operations, str(mountpoint), fuse_options(config))
                except RuntimeError as exc:
                    why = fuse_reason(fusermount.text) or exc
                    raise MountError(f"cannot mount on {mountpoint}: {why}") from exc
                try:
                    nursery.start_soon(_watch_signals)
                    nursery.start_soon(return_to_first_group, proxies, probe)
                    async with operator_services(config, view, set_proxy, nursery):
                        nursery.start_soon(_announce, config, mountpoint, readiness)
                        await pyfuse3.main()
                finally:
                    sd_notify("STOPPING=1", f"STATUS=unmounting {mountpoint}")
                    nursery.cancel_scope.cancel()
                    pyfuse3.close(unmount=True)
                    log.info("unmounted %s", mountpoint)


def replica_choice(
    config: Config, federation: Federation, nursery: trio.Nursery
) -> ReplicaChoice | None:
    """The mount's replica choice (docs/replicas.md); None: the federation's 302 only."""
    if config.replica_choice == "federation" and not config.multi_replica:
        return None
    # A spread read is measured: multi_replica=on implies replica_choice=measured
    # (with the federation's order, a file found corrupt could be read again from
    # the blocks of a spread still in flight: seen in tests/replicas).
    mode = "measured" if config.multi_replica else config.replica_choice
    return ReplicaChoice(federation, nursery, mode=mode, multi=config.multi_replica)


async def _check_root(federation: Federation, config: Config) -> None:
    try:
        with trio.fail_after(config.mount_timeout):
            root = await _stat_root(federation, config)
    except trio.TooSlowError:
        raise MountError(f"{config.url}: no answer within {config.mount_timeout:g} s") from None
    except DavfedError as exc:
        raise MountError(f"{config.url}: {exc}") from exc
    if not root.is_dir:
        raise MountError(f"{config.url} is a file, not a directory")


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc`` (nurseries wrap errors in groups)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Keep glibc from giving each worker thread its own malloc arena.

    The daemon's threads (block writes and disk reads) allocate and free
    megabyte buffers; with one arena per thread, freed memory stays with the
    arenas and the daemon's RSS creeps up. Two arenas keep it close to what is
    actually in use. Must run before any thread starts.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc
        log.debug("mallopt unavailable; malloc arenas left as they are")


def run(config: Config, ready_fd: int | None = None) -> int:
    """Serve ``config.mountpoint`` in the foreground until unmounted or signalled.

    When the mount is live and one metadata request to the federation
    succeeded, writes ``READY\\n`` to ``ready_fd`` (if given) and closes it;
    on a failure before that, writes ``ERROR <one line>\\n`` and returns 32.
    Returns 0 after a clean unmount.
    """
    readiness = Readiness(ready_fd)
    limit_malloc_arenas()
    try:
        trio.run(serve, config, readiness)
    except Exception as caught:
        exc = _leaf(caught)
        if isinstance(exc, MountError):
            log.error("%s", exc)
            readiness.failed(str(exc))
        else:
            log.error("mount failed", exc_info=caught)
            readiness.failed(f"internal error: {exc!r}")
        return Exit.MOUNT
    return 0
