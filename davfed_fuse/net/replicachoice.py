"""Choosing among the replicas the federation offers: by measurement, and several at once.

Owns: :class:`ReplicaChoice` (one per mount: the measurements of every endpoint
host, fed by every transfer through :attr:`Federation.on_transfer`, the probes of
hosts not measured yet, and the counters shown in the ``replicas`` status table)
and :class:`BulkSource` (one per open file: the fetcher of its bulk transfers,
read-ahead and block fills, which takes the federation's metalink once and reads
from the best replica, or spreads the blocks over several).
Must not import: pyfuse3, httpx, the cache (dropping a file's blocks is a callback).

Safety (docs/replicas.md): only URLs of the federation's own metalink are used, and
only while their signature is valid (:func:`~davfed_fuse.net.signedurl.renew_at`);
every transfer goes through :meth:`Federation.read_from`, so credentials go where
the 302 path would send them and a failing replica is penalised and the read goes
on through the federation as before. A file assembled from several replicas is
checked against the federation's adler32 (Want-Digest) once complete; on a
mismatch its blocks are dropped and it is read again from one replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from davfed_fuse.buffers import Buffer
from davfed_fuse.errors import BadResponse, UpstreamError, UpstreamTimeout
from davfed_fuse.net.federation import Federation, Lane
from davfed_fuse.net.http import Origin, origin
from davfed_fuse.net.replicastats import Measurements, Spread, spread_weights
from davfed_fuse.net.signedurl import renew_at
from davfed_fuse.net.webdav import RemoteEntry, url_for
from davfed_fuse.net.wholefile import Assembly, parse_adler32
from davfed_fuse.redaction import redact_url

log = logging.getLogger(__name__)

#: Replica choice modes (``replica_choice=``).
MODES = ("federation", "measured")
#: Seconds to wait for the first probe answer before choosing without figures.
PROBE_WAIT = 5.0
#: After the first probe answers, the others get this fraction of its time more.
PROBE_GRACE = 0.5
#: Files smaller than this many bytes are not worth a metalink.
MIN_BULK = 8 << 20


class ReplicaChoice:
    """The mount's replica choice: measurements, probes, and per-file sources.

    ``mode``: ``federation`` (read where the federation redirects) or ``measured``
    (the replica with the best figures). ``multi``: spread a file's read-ahead over
    every replica fast enough. ``nursery`` runs probes that outlive one read.
    """

    def __init__(
        self,
        federation: Federation,
        nursery: trio.Nursery,
        *,
        mode: str = "measured",
        multi: bool = False,
        clock: Callable[[], float] = time.monotonic,
        min_bulk: int = MIN_BULK,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"replica choice {mode!r} is not one of {', '.join(MODES)}")
        self.federation = federation
        self.mode = mode
        self.multi = multi
        self.min_bulk = min_bulk
        self.measurements = Measurements(clock)
        self._nursery = nursery
        self._probing: dict[Origin, trio.Event] = {}
        #: Files whose assembly failed the whole-file check: read from one replica from
        #: now on (bounded: the oldest leave first).
        self.single: dict[str, None] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "metalinks",  # federation requests: metalinks fetched (one per file open at most)
                "digests",  # federation requests: Want-Digest HEADs (one per assembled file)
                "probes",  # small GETs to endpoints not measured yet (2 per probe)
                "choices",  # files read from a replica chosen by measurement
                "moved",  # ... of which the federation would have sent elsewhere
                "spread_files",  # files whose read-ahead was spread over several replicas
                "verified",  # assembled files whose adler32 matched the federation's
                "mismatches",  # assembled files that did not: blocks dropped, read again
                "unverifiable",  # assembled files the federation has no checksum for
            ),
            0,
        )
        federation.on_transfer = self.measurements.record
        federation.transport.on_response = self._first_byte

    def _first_byte(self, url: str, seconds: float) -> None:
        """From a transport worker thread (Measurements takes its lock)."""
        if origin(url) != origin(self.federation.base_url):
            self.measurements.record_first_byte(url, seconds)

    def source(
        self, entry: RemoteEntry, streaming: Callable[[], bool], drop: Callable[[], object]
    ) -> BulkSource:
        """The bulk fetcher of one open file; ``streaming()``: whether it is read sequentially
        now; ``drop()``: drop its cached blocks (after a whole-file mismatch)."""
        return BulkSource(self, entry, streaming, drop)

    def counts(self) -> dict[str, int]:
        """The counters as ``replica_<name>`` (the root's ``user.davfed.tables``), with the
        number of endpoint hosts measured."""
        out = {f"replica_{name}": n for name, n in self.counters.items()}
        out["replica_hosts"] = len(self.measurements.table())
        return out

    def table(self) -> dict[str, object]:
        """What the ``replicas`` status table shows."""
        return {
            "mode": self.mode,
            "multi": self.multi,
            **self.counters,
            "hosts": self.measurements.table(),
        }

    async def probe(self, replicas: list[str], path: str, size: int) -> None:
        """Measure the hosts of ``replicas`` that have no (fresh) figures.

        A probe is two ranged GETs of one byte (the second on the connection the first
        opened: one round trip plus the server's time to first byte). Returns when every
        probe has answered, or when the first has and the others had half its time
        again; the rest finish in the background and count when they do.
        """
        todo = [u for u in replicas if self.measurements.needs_probe(u)]
        if not todo:
            return
        events = []
        for url in todo:
            key = origin(url)
            event = self._probing.get(key)
            if event is None:
                event = self._probing[key] = trio.Event()
                self._nursery.start_soon(self._probe_one, url, path, size, event)
            events.append(event)
        first = trio.Event()
        every = trio.Event()

        async def watch(event: trio.Event) -> None:
            await event.wait()
            first.set()
            if all(e.is_set() for e in events):
                every.set()

        started = trio.current_time()
        async with trio.open_nursery() as watchers:
            for event in events:
                watchers.start_soon(watch, event)
            with trio.move_on_after(PROBE_WAIT):
                await first.wait()
                grace = PROBE_GRACE * (trio.current_time() - started)
                with trio.move_on_after(grace):
                    await every.wait()
            watchers.cancel_scope.cancel()

    async def _probe_one(self, url: str, path: str, size: int, event: trio.Event) -> None:
        try:
            for _ in range(2):
                self.counters["probes"] += 1
                await self.federation.read_from(url, path, 0, 1, size, fallback=False)
        except (UpstreamError, UpstreamTimeout, BadResponse) as exc:
            log.info("probe of %s failed: %s", redact_url(url), exc)
        finally:
            self._probing.pop(origin(url), None)
            event.set()


class BulkSource:
    """The fetcher of one open file's bulk transfers (read-ahead and block fills).

    While the file is read sequentially (and is at least ``min_bulk`` bytes), the
    first bulk fetch takes the federation's metalink (once for this open) and
    probes the replicas' hosts not measured yet. Then each fetch goes to the
    replica expected to be fastest (``measured``), or, with ``multi``, to one of the
    replicas fast enough, in proportion to their throughput. Otherwise, or with
    one replica, fetches go through the federation as without this class.
    """

    def __init__(
        self,
        choice: ReplicaChoice,
        entry: RemoteEntry,
        streaming: Callable[[], bool],
        drop: Callable[[], object],
    ) -> None:
        self._choice = choice
        self._federation = choice.federation
        self._path = entry.path
        self._size = entry.size
        self._streaming = streaming
        self._drop = drop
        self._replicas: list[str] | None = None  # the metalink's, once taken
        self._preparing = trio.Lock()
        self._spread: Spread | None = None
        self._assembly = Assembly(entry.size)
        self._single = entry.path in choice.single  # after a mismatch: one replica only
        self._generation = 0  # bumped by a mismatch: fetches begun before it are redone
        self._checked = False
        self._chosen: str | None = None

    @property
    def replicas(self) -> list[str]:
        return list(self._replicas or ())

    async def fetch(self, start: int, end: int) -> Buffer:
        """Bytes ``[start, end)`` of the file (a run of whole blocks)."""
        federation, path, size = self._federation, self._path, self._size
        if self._replicas is None and (size < self._choice.min_bulk or not self._streaming()):
            data = await federation.read(path, start, end, size, lane=Lane.BACKGROUND)
            await self.witness(start, data)
            return data
        await self._prepare()
        generation = self._generation
        url = self._pick(end - start)
        if url is None:
            data = await federation.read(path, start, end, size, lane=Lane.BACKGROUND)
            source = "federation"
        else:
            data = await federation.read_from(url, path, start, end, size)
            source = url
        if generation != self._generation:  # a mismatch dropped the file meanwhile
            return await federation.read(path, start, end, size, lane=Lane.BACKGROUND)
        if not self._single:
            self._assembly.add(start, data, source)
            await self._check()
            if generation != self._generation:
                return await federation.read(path, start, end, size, lane=Lane.BACKGROUND)
        return data

    async def witness(self, start: int, data: Buffer) -> None:
        """Bytes of the file that came through the federation's own redirect (a direct
        read, a fetch before the stream was recognised): part of the whole file that a
        spread read is checked as, so that its pieces can cover it."""
        if not self._single:
            self._assembly.add(start, data, "federation")
            await self._check()

    async def _prepare(self) -> None:
        async with self._preparing:
            if self._replicas is not None:
                return
            choice = self._choice
            choice.counters["metalinks"] += 1
            replicas = await self._federation.metalink(self._path)
            if len(replicas) > 1:
                await choice.probe(replicas, self._path, self._size)
            self._replicas = replicas
            if len(replicas) > 1 and choice.multi:
                self._spread = Spread(replicas)
                choice.counters["spread_files"] += 1

    def _usable(self) -> list[str]:
        """The metalink's replicas whose endpoint has not failed and whose URL is valid."""
        now = time.time()
        out = []
        for url in self._replicas or ():
            due = renew_at(url, now=now)
            if (due is None or due > now) and not self._federation.penalised(url):
                out.append(url)
        return out

    def _pick(self, nbytes: int) -> str | None:
        """The replica for the next ``nbytes``, or None: through the federation."""
        choice = self._choice
        usable = self._usable()
        if len(usable) < 2 or self._single:
            return None
        measurements = choice.measurements
        stale = [u for u in usable if measurements.needs_probe(u)]
        if stale:  # refresh in the background: the choice follows changing links
            choice._nursery.start_soon(choice.probe, stale, self._path, self._size)
        if self._spread is not None:
            weights = spread_weights(measurements, usable, nbytes)
            if len(weights) >= 2:
                return self._spread.pick(weights, nbytes)
        if choice.mode != "measured":
            return None
        best = measurements.rank(usable, nbytes)[0]
        if measurements.expected(best, nbytes) is None:
            return None  # nothing measured yet: the federation's order
        if best != self._chosen:
            self._chosen = best
            choice.counters["choices"] += 1
            if best != usable[0]:
                choice.counters["moved"] += 1
            log.info(
                "%s: reading from %s (measured)",
                self._path,
                redact_url(best),
                extra={"event.action": "replica-choice", "url.path": self._path},
            )
        self._federation.prefer(self._path, best)
        return best

    async def _check(self) -> None:
        """Once the pieces cover the file and came from several replicas: compare its
        adler32 with the federation's; on a mismatch drop its blocks and go single."""
        if self._checked:
            return
        value = self._assembly.checksum()
        if value is None:
            return
        self._checked = True
        if len(self._assembly.sources) < 2:
            return
        choice = self._choice
        choice.counters["digests"] += 1
        try:
            answer = await self._federation.head(
                url_for(self._federation.base_url, self._path), {"Want-Digest": "adler32"}
            )
            expected = parse_adler32(answer.headers.get("Digest", ""))
        except (UpstreamError, UpstreamTimeout, BadResponse) as exc:
            log.info("%s: no whole-file checksum (%s)", self._path, exc)
            expected = None
        if expected is None:
            choice.counters["unverifiable"] += 1
            return
        if expected == value:
            choice.counters["verified"] += 1
            return
        choice.counters["mismatches"] += 1
        log.error(
            "%s: assembled from %d replicas, adler32 %s but the federation says %s: "
            "dropping its cached blocks, reading it again from one replica",
            self._path,
            len(self._assembly.sources),
            value,
            expected,
            extra={"event.action": "checksum-mismatch", "url.path": self._path},
        )
        self._single = True
        choice.single[self._path] = None
        while len(choice.single) > 4096:
            del choice.single[next(iter(choice.single))]
        self._generation += 1
        self._assembly.clear()
        self._federation.forget_target(self._path)
        self._drop()
