"""Prometheus metrics of a mount (``metrics_addr=127.0.0.1:PORT``; off by default).

Owns: :class:`MountCollector` (a prometheus-client collector that reads the mount's
counters when Prometheus scrapes: nothing on the read path calls prometheus-client)
and :func:`start_metrics` (its HTTP server, a thread of prometheus-client's own,
serving ``/metrics`` and nothing else: no configuration, no secret).
Must not import: pyfuse3.

Every name starts with ``davfed_``; docs/operations.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from davfed_fuse import __version__
from davfed_fuse.daemon.status import MountView, cache_counters, credential_info
from davfed_fuse.daemon.telemetry import Histogram
from davfed_fuse.redaction import redact_url

log = logging.getLogger(__name__)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(family: HistogramMetricFamily, kind: str, h: Histogram) -> None:
    buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()]
    family.add_metric([kind], buckets, h.total)


class MountCollector(Collector):
    """The mount's numbers, read at scrape time from a :class:`MountView`."""

    def __init__(self, view: MountView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view, t = self.view, self.view.telemetry
        info = GaugeMetricFamily(
            "davfed_info", "davfed version and federation", labels=["version", "url"]
        )
        info.add_metric([__version__, redact_url(view.url)], 1)
        yield info
        yield _counter(
            "davfed_kernel_read_bytes", "bytes the kernel read from the mount", t.kernel_bytes
        )
        yield _counter("davfed_kernel_reads", "FUSE read requests answered", t.kernel_reads)
        fetched = CounterMetricFamily(
            "davfed_endpoint_fetched_bytes", "body bytes received, per host", labels=["host"]
        )
        requests = CounterMetricFamily(
            "davfed_endpoint_requests",
            "ranged GETs per host and status class (none: no answer)",
            labels=["host", "status_class"],
        )
        errors = CounterMetricFamily(
            "davfed_endpoint_errors", "failed GETs per host", labels=["host"]
        )
        for endpoint in list(t.endpoints.values()):
            fetched.add_metric([endpoint.host], endpoint.bytes)
            errors.add_metric([endpoint.host], endpoint.errors)
            for klass, n in list(endpoint.statuses.items()):
                requests.add_metric([endpoint.host, klass], n)
        yield fetched
        yield requests
        yield errors
        yield _counter("davfed_failovers", "replicas given up on during a read", t.failovers)
        yield _counter("davfed_retries", "rounds over all replicas after the first", t.retries)
        yield _counter(
            "davfed_federation_redirects", "the federation's redirects followed", t.redirects
        )
        yield _counter("davfed_metalinks", "metalinks fetched after a replica failed", t.metalinks)
        yield _counter("davfed_downloads", "storage GETs that succeeded", t.downloads)
        errnos = CounterMetricFamily(
            "davfed_fuse_errors", "errors answered to the kernel, by errno", labels=["errno"]
        )
        for name, n in list(t.errnos.items()):
            errnos.add_metric([name], n)
        yield errnos
        latency = HistogramMetricFamily(
            "davfed_read_latency_seconds",
            "FUSE read latency; cold: the read waited for a fetch",
            labels=["kind"],
        )
        _histogram(latency, "cold", t.read_cold)
        _histogram(latency, "warm", t.read_warm)
        yield latency
        yield GaugeMetricFamily("davfed_open_files", "open files", value=view.open_files())
        yield GaugeMetricFamily(
            "davfed_readahead_transfers", "read-ahead transfers running", value=t.in_flight[True]
        )
        yield from self._cache()
        left = credential_info(view.credentials)["seconds_left"]
        if left is not None:
            yield GaugeMetricFamily(
                "davfed_credential_seconds_left", "seconds until the credential expires", value=left
            )
        healthy = view.health()[0] == "healthy"
        yield GaugeMetricFamily("davfed_healthy", "1 healthy, 0 degraded", value=int(healthy))

    def _cache(self) -> Iterator[Metric]:
        cache = self.view.cache
        if cache is None:
            return
        c = cache_counters(cache)
        yield _counter("davfed_cache_hits", "blocks read from the cache", c.hits)
        yield _counter("davfed_cache_misses", "blocks a read had to fetch", c.misses)
        yield _counter("davfed_cache_evictions", "blocks evicted (this process)", c.evicted)
        yield _counter(
            "davfed_cache_fetched_bytes", "bytes fetched into the cache", c.bytes_fetched
        )
        yield _counter("davfed_cache_passthrough", "fetched blocks not stored", c.passthrough)
        yield GaugeMetricFamily("davfed_cache_bytes", "bytes on disk", value=cache.stats().bytes)
        yield GaugeMetricFamily("davfed_cache_max_bytes", "the cache's cap", value=cache.max_bytes)


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9109`` or ``[::1]:9109`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9109")
    return host.strip("[]"), int(port)


def start_metrics(view: MountView, address: str) -> Any:
    """Serve ``/metrics`` on ``address``; returns the server (``.shutdown()`` it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MountCollector(view))
    host, port = parse_address(address)
    server, _thread = start_http_server(port, host, registry=registry)
    log.info("Prometheus metrics on http://%s/metrics", address)
    return server
