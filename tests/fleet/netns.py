"""Network namespaces as "VMs": each with a veth pair to a bridge in the root namespace,
on link-local addresses. Daemons are started with ``nsenter --net=`` (not ``ip netns
exec``, whose private mount namespace would hide the FUSE mount from the test)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

SUBNET = "169.254.77"
HOST = f"{SUBNET}.1"  # the root namespace's side: federation, squid


def available() -> bool:
    return (
        os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nsenter") is not None
    )


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True, slots=True)
class VM:
    name: str  # the namespace, /run/netns/NAME
    address: str

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]


class Fleet:
    """A bridge with ``HOST`` and ``count`` namespaces on it (``SUBNET``.10, .11, ...)."""

    def __init__(self, count: int) -> None:
        tag = f"{os.getpid() % 10000}"
        self.bridge = f"dfbr{tag}"
        self.vms: list[VM] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{HOST}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(count):
            vm = VM(f"dfvm{i}-{tag}", f"{SUBNET}.{10 + i}")
            host_side, vm_side = f"dfh{i}-{tag}", f"dfv{i}-{tag}"
            ip("netns", "add", vm.name)
            self.vms.append(vm)
            ip("link", "add", host_side, "type", "veth", "peer", "name", vm_side)
            ip("link", "set", vm_side, "netns", vm.name)
            ip("link", "set", host_side, "master", self.bridge)
            ip("link", "set", host_side, "up")
            run = ["ip", "-n", vm.name]
            for argv in (
                [*run, "addr", "add", f"{vm.address}/24", "dev", vm_side],
                [*run, "link", "set", vm_side, "up"],
                [*run, "link", "set", "lo", "up"],
            ):
                subprocess.run(argv, check=True, capture_output=True, timeout=10)

    def close(self) -> None:
        for vm in self.vms:
            subprocess.run(["ip", "netns", "del", vm.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
