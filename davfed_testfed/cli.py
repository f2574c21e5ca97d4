"""``davfed testfed DATA_DIR --port PORT [...]``: run a test federation in the foreground.

Owns: the command line of the test federation, its one-line errors (exit code
1, never a traceback), signal handling (SIGINT/SIGTERM stop it cleanly, nginx
included) and the ready output: the federation URL on stdout, or with
``--ready-json`` one JSON line (the document :class:`~.handle.TestFederation`
reads). ``--watch-stdin`` also stops it when stdin reaches end of file, so a
federation started by a test never outlives the test process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from davfed_testfed.nginx import NginxError
from davfed_testfed.options import ENDPOINT_KINDS, FedOptions, OptionsError
from davfed_testfed.server import StartupError, serve

PROG = "davfed testfed"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in ENDPOINT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown endpoint kind {kind!r} (one of {', '.join(ENDPOINT_KINDS)})"
            )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Serve DATA_DIR as a Dynafed-compatible federation.")
    p.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="the tree to federate")
    p.add_argument("--port", type=int, required=True, help="front end port (0: any free)")
    p.add_argument("--endpoints", type=int, default=3, help="storage endpoints (default 3)")
    p.add_argument("--prefix", default="/myfed", help="federation path prefix (default /myfed)")
    p.add_argument(
        "--kinds",
        type=_kinds,
        default=(),
        help="endpoint kinds, comma-separated: dav,s3v2,s3v4,azure (default all dav);"
        " one kind is used for every endpoint",
    )
    p.add_argument(
        "--health-period",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between endpoint health checks (default 1)",
    )
    p.add_argument(
        "--max-latency",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a health check slower than this marks the endpoint offline (default 2)",
    )
    p.add_argument(
        "--maxlistitems",
        type=int,
        default=10000,
        help="directories with more children cannot be listed (default 10000)",
    )
    p.add_argument(
        "--no-replica-status",
        type=int,
        default=404,
        choices=(404, 503),
        help="status when no replica is online (default 404)",
    )
    p.add_argument(
        "--second-hop",
        default="",
        metavar="INDICES",
        help="dav endpoints (comma-separated indices, or 'all') whose head node "
        "302s to a disk node",
    )
    p.add_argument(
        "--checksum-endpoints",
        default="all",
        metavar="INDICES",
        help="endpoints flagged candochecksum (comma-separated indices, 'all' or 'none'): "
        "the front end redirects Want-Digest requests to them and they answer with a "
        "Digest header (default all)",
    )
    p.add_argument(
        "--geo-rank",
        type=_int_list,
        default=(),
        metavar="R0,R1,...",
        help="distance rank of each endpoint, lowest first (default: endpoint order)",
    )
    p.add_argument("--shuffle", action="store_true", help="shuffle endpoints of equal rank")
    p.add_argument("--seed", type=int, default=None, help="seed of --shuffle")
    p.add_argument(
        "--signature-validity",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="validity of signed URLs (default 3600)",
    )
    p.add_argument(
        "--sign-cache-ttl",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a signed URL is reused for redirects (default 600)",
    )
    p.add_argument(
        "--access-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="append one line per front-end request: time, client, X-Forwarded-For, "
        "method, path, status",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IPv4 address the front end, control API and endpoints listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--endpoint-hosts",
        default="",
        metavar="A0,A1,...",
        help="IPv4 address of each endpoint, e.g. behind different emulated links "
        "(default: --host for all)",
    )
    p.add_argument(
        "--https",
        action="store_true",
        help="front the federation with Apache httpd + mod_ssl: --port is its "
        "'SSLVerifyClient require' port",
    )
    p.add_argument(
        "--optional-port",
        type=int,
        default=0,
        metavar="PORT",
        help="with --https: Apache's 'SSLVerifyClient optional' port, for tokens (default any)",
    )
    p.add_argument(
        "--pki-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --https: the test PKI (CA, host cert, token key); made there if missing "
        "(default: a new one in the work directory)",
    )
    p.add_argument(
        "--auth-rules",
        type=Path,
        default=None,
        metavar="FILE",
        help="Dynafed authorization rules: 'allowusers|allowgroups <DN|user|group> "
        "<prefix> <modes>' lines (default: allow all)",
    )
    p.add_argument("--control-port", type=int, default=0, help="control API port (default any)")
    p.add_argument(
        "--control-file",
        type=Path,
        default=None,
        help="write the ready document (JSON) to this file once serving",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep configs and logs here instead of a temporary directory",
    )
    p.add_argument(
        "--ready-json",
        action="store_true",
        help="print the ready document as one JSON line instead of the URL",
    )
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin is closed")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p


def options_from(args: argparse.Namespace) -> FedOptions:
    kinds: tuple[str, ...] = args.kinds
    if len(kinds) == 1 and args.endpoints != 1:
        kinds = kinds * args.endpoints
    hop_text = args.second_hop.strip()
    if hop_text == "all":
        second_hop = frozenset(
            i for i in range(args.endpoints) if (kinds or ("dav",) * args.endpoints)[i] == "dav"
        )
    else:
        try:
            second_hop = frozenset(_int_list(hop_text))
        except argparse.ArgumentTypeError as exc:
            raise OptionsError(f"--second-hop: {exc}") from None
    checksum_text = args.checksum_endpoints.strip()
    checksum_endpoints: frozenset[int] | None = None
    if checksum_text == "none":
        checksum_endpoints = frozenset()
    elif checksum_text != "all":
        try:
            checksum_endpoints = frozenset(_int_list(checksum_text))
        except argparse.ArgumentTypeError as exc:
            raise OptionsError(f"--checksum-endpoints: {exc}") from None
    return FedOptions(
        data_dir=args.data_dir,
        port=args.port,
        endpoints=args.endpoints,
        kinds=kinds,
        prefix=args.prefix,
        health_period=args.health_period,
        max_latency=args.max_latency,
        maxlistitems=args.maxlistitems,
        no_replica_status=args.no_replica_status,
        second_hop=second_hop,
        geo_rank=args.geo_rank,
        shuffle=args.shuffle,
        seed=args.seed,
        signature_validity=args.signature_validity,
        sign_cache_ttl=args.sign_cache_ttl,
        control_port=args.control_port,
        work_dir=args.work_dir,
        host=args.host,
        access_log=args.access_log,
        https=args.https,
        optional_port=args.optional_port,
        pki_dir=args.pki_dir,
        auth_rules=args.auth_rules,
        checksum_endpoints=checksum_endpoints,
        endpoint_hosts=tuple(a.strip() for a in args.endpoint_hosts.split(",") if a.strip()),
    )


async def _run(opts: FedOptions, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    if args.watch_stdin:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, on_stdin)

    def ready(info: dict[str, Any]) -> None:
        if args.control_file is not None:
            tmp = args.control_file.with_name(args.control_file.name + ".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, args.control_file)
        if args.ready_json:
            print(json.dumps(info), flush=True)
        else:
            print(info["url"], flush=True)
            for ep in info["endpoints"]:
                print(f"  {ep['name']} ({ep['kind']}): {ep['base_url']}", file=sys.stderr)
            https = info.get("https")
            if https:
                print(f"  optional-cert URL: {https['optional_url']}", file=sys.stderr)
                print(f"  CA dir: {https['ca_dir']}", file=sys.stderr)
            print(f"  control API: {info['control_url']}", file=sys.stderr, flush=True)

    await serve(opts, ready, stop)


def main(argv: Sequence[str]) -> int:
    """Run ``davfed testfed``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
        opts = options_from(args)
        opts.check()
    except _UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OptionsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(_run(opts, args))
    except (StartupError, NginxError, OptionsError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
