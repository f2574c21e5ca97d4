"""The settings of one test federation, as one frozen value.

Owns: :class:`FedOptions` and its validation (:meth:`FedOptions.check`). Both
the command line (``cli.py``) and the Python handle (``handle.py``, through the
command line) end up here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from davfed_testfed.namespace import normalize_prefix

ENDPOINT_KINDS = ("dav", "s3v2", "s3v4", "azure")


class OptionsError(ValueError):
    """Settings that cannot work together (the message is shown to the user as is)."""


@dataclass(frozen=True, slots=True)
class FedOptions:
    """Everything ``davfed testfed`` is told."""

    data_dir: Path
    port: int = 0
    endpoints: int = 3
    kinds: tuple[str, ...] = ()  # one per endpoint; empty: all "dav"
    prefix: str = "/myfed"
    health_period: float = 1.0
    max_latency: float = 2.0
    maxlistitems: int = 10000
    no_replica_status: int = 404
    second_hop: frozenset[int] = field(default_factory=frozenset)
    geo_rank: tuple[int, ...] = ()  # one per endpoint, lower first; empty: endpoint order
    shuffle: bool = False
    seed: int | None = None
    signature_validity: int = 3600
    sign_cache_ttl: float = 600.0
    control_port: int = 0
    work_dir: Path | None = None
    host: str = "127.0.0.1"  # the IPv4 address every server listens on
    access_log: Path | None = None  # the front end's requests, one line each
    https: bool = False  # Apache with mod_ssl in front (port: its "require" port)
    optional_port: int = 0  # HTTPS mode: Apache's "SSLVerifyClient optional" port
    pki_dir: Path | None = None  # HTTPS mode: the test PKI (made here if missing)
    auth_rules: Path | None = None  # allowusers/allowgroups lines
    #: endpoints flagged ``candochecksum`` (Want-Digest); None: every endpoint
    checksum_endpoints: frozenset[int] | None = None
    #: the IPv4 address of each endpoint (e.g. behind different emulated links); empty: host
    endpoint_hosts: tuple[str, ...] = ()

    def endpoint_host(self, index: int) -> str:
        return self.endpoint_hosts[index] if self.endpoint_hosts else self.host

    @property
    def endpoint_kinds(self) -> tuple[str, ...]:
        return self.kinds or ("dav",) * self.endpoints

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.geo_rank or tuple(range(self.endpoints))

    @property
    def checksum_set(self) -> frozenset[int]:
        """The indices of the endpoints that answer ``Want-Digest``."""
        if self.checksum_endpoints is None:
            return frozenset(range(self.endpoints))
        return self.checksum_endpoints

    @property
    def url_prefix(self) -> str:
        return normalize_prefix(self.prefix)

    def check(self) -> None:
        """Raise :class:`OptionsError` naming the first problem found."""
        if not self.data_dir.exists():
            raise OptionsError(f"DATA_DIR {self.data_dir} does not exist")
        if not self.data_dir.is_dir():
            raise OptionsError(f"DATA_DIR {self.data_dir} is not a directory")
        if not 1 <= self.endpoints <= 64:
            raise OptionsError("--endpoints must be between 1 and 64")
        if self.kinds and len(self.kinds) != self.endpoints:
            raise OptionsError(
                f"--kinds lists {len(self.kinds)} kinds for {self.endpoints} endpoints"
            )
        bad = [k for k in self.kinds if k not in ENDPOINT_KINDS]
        if bad:
            raise OptionsError(
                f"unknown endpoint kind {bad[0]!r} (one of {', '.join(ENDPOINT_KINDS)})"
            )
        if self.geo_rank and len(self.geo_rank) != self.endpoints:
            raise OptionsError(
                f"--geo-rank lists {len(self.geo_rank)} ranks for {self.endpoints} endpoints"
            )
        if any(not 0 <= i < self.endpoints for i in self.second_hop):
            raise OptionsError("--second-hop names an endpoint that does not exist")
        if any(not 0 <= i < self.endpoints for i in self.checksum_set):
            raise OptionsError("--checksum-endpoints names an endpoint that does not exist")
        if any(self.endpoint_kinds[i] != "dav" for i in self.second_hop):
            raise OptionsError("--second-hop applies to dav endpoints only")
        if not 0 <= self.port <= 65535 or not 0 <= self.control_port <= 65535:
            raise OptionsError("ports must be between 0 and 65535")
        if self.health_period <= 0 or self.max_latency <= 0:
            raise OptionsError("--health-period and --max-latency must be positive")
        if self.no_replica_status not in (404, 503):
            raise OptionsError("--no-replica-status must be 404 or 503")
        if self.signature_validity <= 0 or self.sign_cache_ttl < 0:
            raise OptionsError(
                "--signature-validity must be positive, --sign-cache-ttl not negative"
            )
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            raise OptionsError(f"--host {self.host!r} is not an IPv4 address") from None
        if self.endpoint_hosts and len(self.endpoint_hosts) != self.endpoints:
            raise OptionsError(
                f"--endpoint-hosts lists {len(self.endpoint_hosts)} addresses "
                f"for {self.endpoints} endpoints"
            )
        for address in self.endpoint_hosts:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise OptionsError(
                    f"--endpoint-hosts: {address!r} is not an IPv4 address"
                ) from None
        if self.maxlistitems < 0:
            raise OptionsError("--maxlistitems must not be negative")
        if not self.https and (self.pki_dir is not None or self.optional_port):
            raise OptionsError("--pki-dir and --optional-port need --https")
        if not 0 <= self.optional_port <= 65535:
            raise OptionsError("ports must be between 0 and 65535")
        if self.auth_rules is not None and not self.auth_rules.is_file():
            raise OptionsError(f"--auth-rules {self.auth_rules} is not a file")
