"""Separate hosts on one machine: network namespaces joined by a bridge.

Each host is a namespace with one veth interface, ``eth0``, holding an address
in 10.213.0.0/24; the other ends of the veth pairs sit on a bridge inside a
namespace of its own, so nothing is added to the machine's own network.
Needs root and ``ip`` (iproute2).
"""
from __future__ import annotations

import os
import shutil
import subprocess

SUBNET = "10.213.0"


def available() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Network:
    """``n`` hosts on one bridge; use as a context manager, which cleans up."""

    def __init__(self, n: int):
        tag = f"zf{os.getpid() % 100000}"
        self.bridge = f"{tag}-br"
        self.hosts = [f"{tag}-h{i}" for i in range(n)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(n)]
        self._tag = tag

    def __enter__(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _create(self) -> None:
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, (host, address) in enumerate(zip(self.hosts, self.addresses)):
            _ip("netns", "add", host)
            _ip("-n", host, "link", "set", "lo", "up")
            inside, outside = f"{self._tag}h{i}", f"{self._tag}b{i}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", host)
            _ip("link", "set", outside, "netns", self.bridge)
            _ip("-n", host, "link", "set", inside, "name", "eth0")
            _ip("-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", self.bridge, "link", "set", outside, "master", "br0")
            _ip("-n", self.bridge, "link", "set", outside, "up")

    def command(self, host: int, *args: str) -> list[str]:
        """``args`` to run inside host number ``host``."""
        return ["ip", "netns", "exec", self.hosts[host], *args]

    def cut(self, host: int) -> None:
        """Take host ``host``'s link down, as if its cable were pulled."""
        _ip("-n", self.hosts[host], "link", "set", "eth0", "down")

    def close(self) -> None:
        for name in [*self.hosts, self.bridge]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
