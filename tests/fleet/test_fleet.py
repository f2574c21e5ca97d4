"""Three "VMs" (network namespaces, one davfed mount each) behind one real squid in
front of the test federation with signed-URL (S3 v4) endpoints.

What a site running many VMs behind a squid needs (issue 15): the second and third
VM take their bytes from squid; three VMs at once cost the origin about one copy;
squid dying mid-read costs the reader nothing (the read finishes through DIRECT);
squid is used again after proxy_reset_after; the federation sees one redirect per
file open; start-up jitter spreads the mounts' first requests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from davfed_testfed import TestFederation
from tests.fleet import netns
from tests.fleet import squid as squidmod
from tests.fleet.netns import HOST, SUBNET, VM, Fleet
from tests.fleet.squid import Squid
from tests.mounting import HELPER, requires_fuse, unmount

pytestmark = [
    pytest.mark.mount,
    requires_fuse,
    pytest.mark.skipif(not squidmod.available(), reason="needs squid (dev/bootstrap)"),
    pytest.mark.skipif(not netns.available(), reason="needs root, ip and nsenter"),
]

MiB = 1 << 20
SETS = {"a": 3, "b": 3, "c": 2, "d": 1}  # job input sets: files of 8 MiB each
FILE = 8 * MiB


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    made = Fleet(3)
    try:
        yield made
    finally:
        made.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def federation_log(path: Path) -> list[tuple[float, str, str, str, int]]:
    """(time, client, method, path, status) per front-end request; the client is the
    VM behind squid (X-Forwarded-For) or the one that came DIRECT."""
    rows = []
    for line in path.read_text().splitlines():
        when, remote, forwarded, method, target, status = line.split()
        client = forwarded.split(",")[0] if forwarded != "-" else remote
        rows.append((float(when), client, method, target, int(status)))
    return rows


def test_three_vms_behind_one_squid(
    fleet: Fleet,
    make_testfed: Callable[..., TestFederation],
    make_squid: Callable[..., Squid],
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    digests: dict[str, str] = {}
    for name, count in SETS.items():
        (data / name).mkdir(parents=True)
        for i in range(count):
            content = os.urandom(FILE)
            (data / name / f"in{i}.root").write_bytes(content)
            digests[f"{name}/in{i}.root"] = hashlib.sha256(content).hexdigest()
    fed_log = tmp_path / "federation.log"
    fed = make_testfed(
        data,
        endpoints=2,
        kinds=["s3v4", "s3v4"],
        extra_args=["--host", HOST, "--access-log", str(fed_log)],
    )
    squid = make_squid(listen=HOST, clients=[f"{SUBNET}.0/24"], data_hosts=[HOST])
    vms = fleet.vms

    # Mount the three at once, each after its start-up jitter.
    mounts: dict[VM, Path] = {}
    launched = time.time()
    procs = []
    for n, vm in enumerate(vms):
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        mounts[vm] = mnt
        options = ",".join([
            f"proxy={squid.url};DIRECT",
            "proxy_reset_after=3",
            "startup_jitter=2",
            f"cache_dir={tmp_path / f'cache{n}'}",
            "cache_size=256M",
            f"log_file={tmp_path / f'vm{n}.log'}",
            "timeout=10",
        ])  # fmt: skip
        argv = vm.command(str(HELPER), fed.url, str(mnt), "-o", options)
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        run_fleet(fed, fed_log, squid, vms, mounts, digests, launched)
    finally:
        for mnt in mounts.values():
            unmount(mnt)


def read_set(mnt: Path, name: str, digests: dict[str, str]) -> None:
    for i in range(SETS[name]):
        rel = f"{name}/in{i}.root"
        assert sha(mnt / rel) == digests[rel], f"{mnt}: wrong bytes in {rel}"


def run_fleet(
    fed: TestFederation,
    fed_log: Path,
    squid: Squid,
    vms: list[VM],
    mounts: dict[VM, Path],
    digests: dict[str, str],
    launched: float,
) -> None:
    vm1, vm2, vm3 = vms

    def origin() -> int:
        return fed.bytes_sent(0) + fed.bytes_sent(1)

    # The start-up spread: each VM's first request to the federation.
    first = {
        client: when - launched
        for when, client, *_ in reversed(federation_log(fed_log))
        if client in {vm.address for vm in vms}
    }
    assert len(first) == 3
    spread = max(first.values()) - min(first.values())
    print(f"first requests after launch: {sorted(round(t, 2) for t in first.values())} s")
    assert spread > 0.05, "the three mounts did not hit the federation in the same instant"

    # Set a: VM 1 cold, then VMs 2 and 3 cold, from squid.
    size_a = SETS["a"] * FILE
    before = origin()
    read_set(mounts[vm1], "a", digests)
    print(f"set a, VM 1 cold: origin sent {(origin() - before) / size_a:.2f}x")
    for vm in (vm2, vm3):
        mark = len(squid.entries())
        before = origin()
        read_set(mounts[vm], "a", digests)
        mine = [e for e in squid.entries()[mark:] if e.client == vm.address and "/ep" in e.url]
        hit = sum(e.bytes for e in mine if e.hit)
        total = sum(e.bytes for e in mine)
        print(f"set a, {vm.address}: {hit / total:.3f} of {total} bytes from squid")
        misses = [(e.result, e.bytes) for e in mine if not e.hit]
        assert hit >= 0.95 * total and hit >= 0.95 * size_a, misses
        assert origin() - before <= 0.05 * size_a

    # Set b: all three at once cost the origin about one copy.
    before = origin()
    errors: list[BaseException] = []

    def read_b(vm: VM) -> None:
        try:
            read_set(mounts[vm], "b", digests)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_b, args=(vm,)) for vm in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    cost = (origin() - before) / (SETS["b"] * FILE)
    print(f"set b, three VMs at once: origin sent {cost:.2f}x the set")
    seen = [
        (e.time, e.client[-2:], e.result, e.url.split("/")[-1])
        for e in squid.entries()
        if "/b/" in e.url
    ]
    assert cost <= 1.1, sorted(seen)

    # Set c: squid dies in the middle of VM 2's read; the read finishes DIRECT.
    for i in range(2):
        fed.fault(i, "throttle", rate=6 * MiB)
    reader = threading.Thread(target=read_b, args=(vm2,))
    errors.clear()
    result: dict[str, str] = {}

    def read_c() -> None:
        try:
            for i in range(SETS["c"]):
                rel = f"c/in{i}.root"
                result[rel] = sha(mounts[vm2] / rel)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read_c)
    reader.start()
    time.sleep(1.5)
    assert reader.is_alive(), "the read was to be cut in the middle"
    squid.kill()
    killed = time.time()
    reader.join(120)
    fed.clear_faults()
    assert not errors, f"the reader saw an error: {errors}"
    assert result == {k: v for k, v in digests.items() if k.startswith("c/")}
    log2 = (Path(str(mounts[vm2]).replace("mnt1", "vm1.log"))).read_text()
    assert "switching to DIRECT" in log2
    direct = [r for r in federation_log(fed_log) if r[1] == vm2.address and r[0] > killed]
    print(f"VM 2 after squid died: {len(direct)} federation requests DIRECT")

    # Squid back: after proxy_reset_after (3 s) the VM probes it and uses it again.
    squid.start()
    time.sleep(3 + 3 + 1)  # reset_after, plus one check period, plus slack
    mark = len(squid.entries())
    read_set(mounts[vm2], "d", digests)
    again = [e for e in squid.entries()[mark:] if e.client == vm2.address and "/d/" in e.url]
    assert again, "VM 2 went back to squid after proxy_reset_after"

    # The federation's view: one redirect per file open per VM (signatures valid 1 h).
    redirects = Counter(
        (client, path)
        for _, client, method, path, status in federation_log(fed_log)
        if status == 302 and method in ("GET", "HEAD") and "/a/" in path
    )
    per_vm = Counter(client for client, _ in redirects.elements())
    print(
        f"302s for set a per VM: {dict(per_vm)}; per (VM, file): {sorted(set(redirects.values()))}"
    )
    assert set(redirects.values()) == {1} and len(redirects) == 3 * SETS["a"]
    requests = Counter(client for _, client, *_ in federation_log(fed_log))
    print(f"federation requests per VM over the whole test: {dict(requests)}")
