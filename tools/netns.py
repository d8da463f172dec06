"""A network namespace joined to the host by a veth pair, for servers and boxes in tests.

Janus never gathers ICE candidates on a loopback interface, so the tests and the benchmark run
it in a namespace of its own: its media and API addresses exist only on the veth link between
that namespace and this host, reachable from here and from nowhere else. The same helper puts a
box behind a NAT or a poor link. Needs root and iproute2; names carry the caller's prefix.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


class NetnsError(RuntimeError):
    pass


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class Netns:
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def available() -> bool:
    return os.geteuid() == 0 and subprocess.run(["ip", "-V"], capture_output=True,
                                                check=False).returncode == 0


@contextlib.contextmanager
def namespace(prefix: str, index: int = 0, subnet: int = 231) -> Iterator[Netns]:
    """A fresh namespace `<prefix><n>`, host side `10.<subnet>.<n>.1/30`, inside `.2`."""
    tag = (os.getpid() * 7 + index) % 250
    ns = Netns(name=f"{prefix}{tag}", host_if=f"{prefix}{tag}h", ns_if=f"{prefix}{tag}n",
               host_ip=f"10.{subnet}.{tag}.1", ns_ip=f"10.{subnet}.{tag}.2")
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)
    ip("netns", "add", ns.name)
    try:
        ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        ip("link", "set", ns.ns_if, "netns", ns.name)
        ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        ip("link", "set", ns.host_if, "up")
        ip("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        ip("-n", ns.name, "link", "set", ns.ns_if, "up")
        ip("-n", ns.name, "link", "set", "lo", "up")
        ip("-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
