"""What a bare HTTP client gets over the benchmark's link: the limits davfed is held to.

Run inside the client's network namespace by ``cachebench`` (standard library only).
Prints one JSON object:

- ``parallel_mb_s``: ``streams`` concurrent ranged GETs splitting the file, each on its own
  connection (the link's rate once TCP's windows are open: what parallel ranges can reach);
- ``ttfb_first_ms``: the federation's 302 on a kept-alive connection, then a new
  connection to the endpoint and a GET of the first 1 MiB (what davfed's first read of a
  first file needs at least);
- ``ttfb_later_ms``: another file's 302 and its first 1 MiB over the two kept-alive
  connections;
- ``random_reads_per_s``: 64 KiB ranged GETs at the given offsets, one after the other on
  one kept-alive connection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urljoin, urlsplit

MiB = 1 << 20


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=60)
    conn.connect()
    return conn


def get(conn: http.client.HTTPConnection, url: str, first: int, last: int) -> bytes:
    parts = urlsplit(url)
    conn.request("GET", parts.path, headers={"Range": f"bytes={first}-{last}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 206 or len(body) != last - first + 1:
        raise SystemExit(f"GET {url} {first}-{last}: HTTP {response.status}, {len(body)} bytes")
    return body


def locate(conn: http.client.HTTPConnection, url: str) -> str:
    conn.request("GET", urlsplit(url).path, headers={"Range": "bytes=0-0"})
    response = conn.getresponse()
    response.read()
    location = response.getheader("Location")
    if response.status != 302 or not location:
        raise SystemExit(f"GET {url}: expected a 302, got HTTP {response.status}")
    return urljoin(url, location)


def parallel(url: str, size: int, streams: int) -> float:
    part = size // streams
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            conn = connect(url)
            last = size - 1 if i == streams - 1 else (i + 1) * part - 1
            first = i * part
            conn.request("GET", urlsplit(url).path, headers={"Range": f"bytes={first}-{last}"})
            response = conn.getresponse()
            buf = bytearray(MiB)
            while response.readinto(buf):
                pass
            conn.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"parallel GETs failed: {errors[0]!r}")
    return size / seconds / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--federation", required=True, help="the federation's base URL")
    ap.add_argument("--big", required=True, help="the big file's name")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--first", required=True, help="a file for the first-file probe")
    ap.add_argument("--later", required=True, help="a file for the later-file probe")
    ap.add_argument("--offsets", required=True, help="comma-separated random read offsets")
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()
    base = args.federation.rstrip("/") + "/"
    out: dict[str, float] = {}

    fed = connect(base)
    big = locate(fed, base + args.big)  # also warms the federation's connection
    t0 = time.perf_counter()
    first = locate(fed, base + args.first)
    endpoint = connect(first)
    get(endpoint, first, 0, MiB - 1)
    out["ttfb_first_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    t0 = time.perf_counter()
    later = locate(fed, base + args.later)
    if urlsplit(later).netloc != urlsplit(first).netloc:
        raise SystemExit("the two probe files are on different endpoints")
    get(endpoint, later, 0, MiB - 1)
    out["ttfb_later_ms"] = round((time.perf_counter() - t0) * 1000, 1)

    offsets = [int(x) for x in args.offsets.split(",")]
    conn = connect(big)
    get(conn, big, 0, 0)
    t0 = time.perf_counter()
    for off in offsets:
        get(conn, big, off, off + 64 * 1024 - 1)
    out["random_reads_per_s"] = round(len(offsets) / (time.perf_counter() - t0), 1)

    out["parallel_mb_s"] = round(parallel(big, args.size, args.streams), 1)
    out["parallel_streams"] = args.streams
    print(json.dumps(out))


if __name__ == "__main__":
    main()
