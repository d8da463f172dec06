"""A box behind a NAT that lets it reach only the broker and the TURN server still joins,
sees and is seen, through coturn with the time-limited credentials its invitation carries."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sessions.points import (
    BRIDGE,
    hashes,
    latest_picture,
    point_name,
    points,
    small_profile,
    tags_seen,
)
from tests.support import (
    ROOT,
    eventually,
    make_controller_config,
    running_controller,
    write_agent_config,
)
from tiepdan.tools import netns
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.turn import Coturn

pytestmark = pytest.mark.skipif(
    not netns.available() or shutil.which("turnserver") is None or
    shutil.which("iptables") is None,
    reason="needs root, iproute2, iptables and Debian's coturn")

NATTED = "nat-box"


async def test_a_box_behind_nat_joins_through_turn(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mqtt_port, turn_port = free_port(), free_port()
    allowed = [("tcp", mqtt_port), ("udp", turn_port), ("tcp", turn_port)]
    with netns.behind_nat("jan", allowed, index=3) as nat:
        # The bridge and the unNATted points: the host's end of the link to the NAT router
        # (coturn refuses loopback peers), which the NATted box may not reach directly.
        monkeypatch.setattr("aioice.ice.get_host_addresses",
                            lambda use_ipv4=True, use_ipv6=True: [nat.host_ip])
        broker = Mosquitto(tmp_path / "broker", port=mqtt_port, listeners=(
            f"listener {mqtt_port} 127.0.0.1\nlistener {mqtt_port} {nat.host_ip}\n"
            "allow_anonymous true\n"))
        broker.start()
        turn = Coturn(tmp_path / "turn", host=nat.host_ip, port=turn_port)
        turn.start()
        process: subprocess.Popen[bytes] | None = None
        try:
            config = make_controller_config(
                tmp_path, broker, bridge={**BRIDGE, "turn_urls": [turn.url],
                                          "turn_secret": turn.secret, "connect_timeout": 20.0},
                sessions={"invite_timeout": 5.0})
            remote = write_agent_config(
                tmp_path, broker, NATTED, board={"profile": str(small_profile(tmp_path))},
                device={"name": point_name(NATTED)}, mqtt={"host": nat.host_ip},
                call={"media_timeout": 3.0, "join_timeout": 15.0, "video_bitrate": 300_000},
                log={"level": "info"})
            log_path = tmp_path / "nat-box.log"
            async with running_controller(config) as controller, \
                    points(tmp_path, broker, ["nat-host"]) as agents:
                with log_path.open("wb") as out:
                    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        nat.command([sys.executable, "-m", "tiepdan.firmware", "--config",
                                     str(remote)]),
                        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
                devices = ["nat-host", NATTED]
                await eventually(lambda: all(controller.registry.get(d) and
                                             controller.registry.get(d).online
                                             for d in devices), 30, what="boxes online")
                session = await controller.sessions.open("nat-host", [NATTED], auto_join=True)
                # Seen: the bridge decodes its pictures; sees: it reports live, which a box
                # does on the first composed picture it receives.
                await eventually(lambda: controller.sessions.point(session.id, NATTED).state
                                 == "live", 60, what="the NATted box live at the bridge")
                await eventually(
                    lambda: (controller.registry.get(NATTED).extra.get("call") or {})
                    .get("state") == "live", 30, what="the NATted box receiving")
                host = agents["nat-host"]
                expected = hashes(devices)

                async def host_sees_it() -> bool:
                    seen = tags_seen(host, await latest_picture(host))
                    return seen.get(NATTED) == expected[NATTED]
                await eventually(host_sees_it, 20, what="the host seeing the NATted box")
                await asyncio.sleep(0.5)
            # It went through the relay, with a credential minted for this point.
            relayed = turn.log_tail(400)
            assert f"{session.id}.{NATTED}" in relayed, relayed[-2000:]
        finally:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            turn.stop()
            broker.stop()
