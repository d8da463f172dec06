"""A live 1 + 3 point session through the bridge: pictures, voices, mute."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.sessions.points import hashes, hears, latest_picture, points, session_controller, \
    tags_seen
from tests.support import eventually
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
            async def sees_all(agent=agent) -> bool:
                seen = tags_seen(agent, await latest_picture(agent))
                return all(seen.get(d) == expected[d] for d in DEVICES if d != device)
            await eventually(sees_all, 15, what=f"{device} seeing every other point")
        await asyncio.sleep(1.5)
        for device, agent in agents.items():
            for other in DEVICES:
                if other != device:
                    assert hears(agent, other), f"{device} does not hear {other}"
            assert not hears(agent, device), f"{device} hears itself"
