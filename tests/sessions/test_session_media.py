"""A live 1 + 3 point session through the bridge: pictures, voices, mute."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.sessions.points import (
    hashes,
    hears,
    latest_picture,
    points,
    session_controller,
    tags_seen,
)
from tests.support import eventually
from tiepdan.firmware.agent.agent import Agent
from tiepdan.tools.broker import Mosquitto

DEVICES = ["pt-host", "pt-1", "pt-2", "pt-3"]


async def test_every_point_sees_and_hears_the_others(tmp_path: Path, broker: Mosquitto) -> None:
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, DEVICES) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in DEVICES), 10,
                         what="every box registered")
        session = await controller.sessions.open("pt-host", DEVICES[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every point live")
        await eventually(lambda: controller.sessions.get(session.id).state == "live", 5,
                         what="session live")
        expected = hashes(DEVICES)
        for device, agent in agents.items():
            others = [d for d in DEVICES if d != device]

            async def sees_all(agent: Agent = agent, others: list[str] = others) -> bool:
                seen = tags_seen(agent, await latest_picture(agent))
                return all(seen.get(d) == expected[d] for d in others)
            await eventually(sees_all, 15, what=f"{device} seeing every other point")
        await asyncio.sleep(1.5)
        for device, agent in agents.items():
            for other in DEVICES:
                if other != device:
                    assert hears(agent, other), f"{device} does not hear {other}"
            assert not hears(agent, device), f"{device} hears itself"


async def test_mute_silences_a_point_for_the_others_and_unmute_restores_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    devices = DEVICES[:3]
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, devices) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in devices), 10,
                         what="every box registered")
        await controller.sessions.open("pt-host", devices[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every point live")
        listeners = [agents["pt-host"], agents["pt-2"]]
        await eventually(lambda: all(hears(a, "pt-1", 0.5) for a in listeners), 10,
                         what="pt-1 heard")
        panel = agents["pt-1"].panel
        await asyncio.to_thread(panel.press, "mute")  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        assert agents["pt-1"].call.muted
        assert panel.led_state("muted") == "on"  # type: ignore[attr-defined]
        for agent in listeners:
            assert not hears(agent, "pt-1", 0.3), "pt-1 still heard 1 s after mute"
            assert hears(agent, "pt-2" if agent is agents["pt-host"] else "pt-host", 0.3)
        await asyncio.to_thread(panel.press, "mute")  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        assert panel.led_state("muted") == "off"  # type: ignore[attr-defined]
        for agent in listeners:
            assert hears(agent, "pt-1", 0.3), "pt-1 not heard 1 s after unmute"
