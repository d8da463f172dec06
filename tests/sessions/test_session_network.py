"""A point's network is cut and comes back: it rejoins by itself, the others never stop.

The point runs as a real agent process in its own network namespace, joined to the host by a
veth pair; the cut is the link going down (MQTT, ICE and media all lose their path, as when a
commune's line fails), the restore is the link coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sessions.points import BRIDGE, point_name, points, small_profile
from tests.support import (
    ROOT,
    eventually,
    make_controller_config,
    running_controller,
    write_agent_config,
)
from tiepdan.tools.broker import Mosquitto, free_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def namespace() -> Iterator[tuple[str, str, str, str]]:
    """(netns, host-side interface, host address, namespace address)."""
    tag = os.getpid() % 100000
    ns, host_if, ns_if = f"td{tag}", f"tdh{tag}", f"tdn{tag}"
    host_ip, ns_ip = f"10.213.{tag % 250}.1", f"10.213.{tag % 250}.2"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", host_ip)
        yield ns, host_if, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Arrivals:
    """Times at which a point received composed pictures and audio."""

    def __init__(self) -> None:
        self.video: list[float] = []

    def largest_gap(self, start: float, end: float) -> float:
        times = [t for t in self.video if start <= t <= end]
        if len(times) < 2:
            return end - start
        edges = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(edges))


async def record(agent: object, arrivals: Arrivals) -> None:
    subscription = agent.call.received_video.subscribe("arrivals")  # type: ignore[attr-defined]
    async for _ in subscription:
        arrivals.video.append(time.monotonic())


async def test_cut_point_rejoins_within_5s_and_the_others_keep_going(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with namespace() as (ns, host_if, host_ip, _):
        monkeypatch.setattr("aioice.ice.get_host_addresses",
                            lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1", host_ip])
        port = free_port()
        broker = Mosquitto(tmp_path / "broker", port=port, listeners=(
            f"listener {port} 127.0.0.1\nlistener {port} {host_ip}\nallow_anonymous true\n"))
        broker.start()
        process: subprocess.Popen[bytes] | None = None
        try:
            config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                            sessions={"invite_timeout": 5.0})
            remote_cfg = write_agent_config(
                tmp_path, broker, "nw-cut", board={"profile": str(small_profile(tmp_path))},
                device={"name": point_name("nw-cut")}, mqtt={"host": host_ip},
                call={"media_timeout": 1.5, "join_timeout": 4.0, "qos_interval": 1.0,
                      "video_bitrate": 300_000}, log={"level": "info"})
            log_path = tmp_path / "nw-cut.log"
            async with running_controller(config) as controller, \
                    points(tmp_path, broker, ["nw-host", "nw-1"]) as agents:
                with log_path.open("wb") as out:
                    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        ["ip", "netns", "exec", ns, sys.executable, "-m", "tiepdan.firmware",
                         "--config", str(remote_cfg)], stdout=out, stderr=subprocess.STDOUT,
                        cwd=ROOT)
                devices = ["nw-host", "nw-1", "nw-cut"]
                await eventually(lambda: all(controller.registry.get(d) and
                                             controller.registry.get(d).online
                                             for d in devices), 20, what="boxes online")
                session = await controller.sessions.open("nw-host", ["nw-1", "nw-cut"],
                                                         auto_join=True)
                point: Callable[[], object] = lambda: controller.sessions.point(  # noqa: E731
                    session.id, "nw-cut")
                await eventually(lambda: all(a.call.state == "live" for a in agents.values())
                                 and point().state == "live", 40,  # type: ignore[attr-defined]
                                 what="every point live")
                arrivals = {d: Arrivals() for d in agents}
                recorders = [asyncio.ensure_future(record(a, arrivals[d]))
                             for d, a in agents.items()]
                before = point().attempt  # type: ignore[attr-defined]
                cut = time.monotonic()
                ip("link", "set", host_if, "down")
                await eventually(lambda: point().state == "away", 10,  # type: ignore[attr-defined]
                                 what="bridge notices the loss")
                await asyncio.sleep(max(0.0, cut + 5.0 - time.monotonic()))
                ip("link", "set", host_if, "up")
                restored = time.monotonic()
                await eventually(lambda: point().state == "live"  # type: ignore[attr-defined]
                                 and point().attempt > before, 15,  # type: ignore[attr-defined]
                                 what="cut point back in the session")
                back = time.monotonic() - restored
                await asyncio.sleep(1.0)
                end = time.monotonic()
                for recorder in recorders:
                    recorder.cancel()
                assert back <= 5.0, f"rejoin took {back:.2f}s after the network came back"
                for device, seen in arrivals.items():
                    gap = seen.largest_gap(cut, end)
                    assert gap < 1.0, f"{device} stopped receiving for {gap:.2f}s"
                assert all(a.call.state == "live" for a in agents.values())
                assert controller.sessions.get(session.id).state == "live"
        finally:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            broker.stop()
