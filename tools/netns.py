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


@dataclass(frozen=True)
class Nat:
    """A box network behind a NAT router: `box` namespace -> `router` (MASQUERADE) -> host."""

    box: str
    router: str
    box_ip: str
    outside_ip: str  # the router's address on the host link: all the host sees of the box
    host_ip: str  # this host on that link

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the box's namespace."""
        return ["ip", "netns", "exec", self.box, *argv]


@contextlib.contextmanager
def behind_nat(prefix: str, allowed: list[tuple[str, int]], index: int = 0) -> Iterator[Nat]:
    """A box namespace whose router masquerades it and lets through only new connections to
    this host's `allowed` (protocol, port) pairs; the host has no route back to the box."""
    tag = (os.getpid() * 7 + index) % 250
    nat = Nat(box=f"{prefix}b{tag}", router=f"{prefix}r{tag}", box_ip=f"10.232.{tag}.2",
              outside_ip=f"10.233.{tag}.2", host_ip=f"10.233.{tag}.1")
    host_if, out_if, in_if, box_if = (f"{prefix}{tag}h", f"{prefix}{tag}o", f"{prefix}{tag}i",
                                      f"{prefix}{tag}b")
    for name in (nat.box, nat.router):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)

    def router(*argv: str) -> None:
        result = subprocess.run(["ip", "netns", "exec", nat.router, *argv], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip()}")

    ip("netns", "add", nat.router)
    ip("netns", "add", nat.box)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", out_if)
        ip("link", "set", out_if, "netns", nat.router)
        ip("addr", "add", f"{nat.host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("link", "add", in_if, "type", "veth", "peer", "name", box_if)
        ip("link", "set", in_if, "netns", nat.router)
        ip("link", "set", box_if, "netns", nat.box)
        ip("-n", nat.router, "addr", "add", f"{nat.outside_ip}/30", "dev", out_if)
        ip("-n", nat.router, "addr", "add", f"10.232.{tag}.1/30", "dev", in_if)
        for link in (out_if, in_if, "lo"):
            ip("-n", nat.router, "link", "set", link, "up")
        ip("-n", nat.router, "route", "add", "default", "via", nat.host_ip)
        ip("-n", nat.box, "addr", "add", f"{nat.box_ip}/30", "dev", box_if)
        ip("-n", nat.box, "link", "set", box_if, "up")
        ip("-n", nat.box, "link", "set", "lo", "up")
        ip("-n", nat.box, "route", "add", "default", "via", f"10.232.{tag}.1")
        router("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", out_if, "-j", "MASQUERADE")
        router("iptables", "-P", "FORWARD", "DROP")
        router("iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate",
               "ESTABLISHED,RELATED", "-j", "ACCEPT")
        for protocol, port in allowed:
            router("iptables", "-A", "FORWARD", "-i", in_if, "-o", out_if, "-p", protocol,
                   "-d", nat.host_ip, "--dport", str(port), "-j", "ACCEPT")
        yield nat
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        for name in (nat.box, nat.router):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
