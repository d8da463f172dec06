"""A session through the Janus backend: VideoRoom forwards, AudioBridge mixes, one composed
picture; every point sees and hears the others (never itself), and the bridge records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.sessions.janus_fixture import janus, janus_bridge, requires_janus
from tests.sessions.points import (
    BRIDGE,
    hashes,
    hears,
    latest_picture,
    points,
    tags_seen,
)
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.controller.sessions.bridge import BridgeError
from tiepdan.firmware.agent.agent import Agent
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.janus import Janus

pytestmark = requires_janus
__all__ = ["janus"]

DEVICES = ["jp-host", "jp-1", "jp-2"]


async def test_points_see_and_hear_each_other_through_janus(tmp_path: Path, broker: Mosquitto,
                                                            janus: Janus) -> None:
    config = make_controller_config(tmp_path, broker, bridge={**BRIDGE, **janus_bridge(janus)},
                                    sessions={"invite_timeout": 5.0},
                                    archive={"segment_seconds": 1.0})
    async with running_controller(config) as controller, \
            points(tmp_path, broker, DEVICES) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in DEVICES), 10,
                         what="every box registered")
        session = await controller.sessions.open("jp-host", DEVICES[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 40,
                         what="every point live")
        await eventually(lambda: controller.sessions.get(session.id).state == "live", 10,
                         what="session live")
        expected = hashes(DEVICES)
        for device, agent in agents.items():
            others = [d for d in DEVICES if d != device]

            async def sees_all(agent: Agent = agent, others: list[str] = others) -> bool:
                seen = tags_seen(agent, await latest_picture(agent))
                return all(seen.get(d) == expected[d] for d in others)
            await eventually(sees_all, 20, what=f"{device} seeing every other point")
        await asyncio.sleep(1.5)
        for device, agent in agents.items():
            for other in DEVICES:
                if other != device:
                    assert hears(agent, other), f"{device} does not hear {other}"
            assert not hears(agent, device), f"{device} hears itself"
        # The composite and the full mix are recorded at the centre, as with the aiortc bridge.
        recorder = controller.archive.recorder_id
        await eventually(lambda: len(controller.archive.receipts(session.id, recorder)) >= 2,
                         20, what="bridge segments in the archive")


async def test_janus_bridge_refuses_legs_out_of_order(tmp_path: Path, broker: Mosquitto,
                                                      janus: Janus) -> None:
    config = make_controller_config(tmp_path, broker, bridge={**BRIDGE, **janus_bridge(janus)})
    async with running_controller(config) as controller:
        bridge = controller.bridge
        assert bridge.plan == "split"
        with pytest.raises(BridgeError) as refused:
            await bridge.join("s-x", "jp-1", "x", "guest", 1, "v=0", "main")
        assert refused.value.code == "bad_request"
        with pytest.raises(BridgeError) as refused:
            await bridge.join("s-x", "jp-1", "x", "guest", 1, "v=0", "audio")
        assert refused.value.code == "conflict"  # no publish leg yet
        with pytest.raises(BridgeError) as refused:
            await bridge.join("s-x", "jp-1", "x", "guest", 1, "not sdp", "publish")
        assert refused.value.code == "bad_request"
        with pytest.raises(BridgeError):
            await bridge.accept("s-x", "jp-1", 1, "view", "v=0")
        assert bridge.session("s-x") is not None  # the session's media goes on
