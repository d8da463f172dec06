"""A session through the Janus backend: VideoRoom forwards, AudioBridge mixes, one composed
picture; every point sees and hears the others (never itself), and the bridge records. A point
whose downlink is poor is switched onto the light rendition of the picture and back, and what
it records of it (copied as it arrives) stays verifiable and playable across the switches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.recording.rec_support import Archive, received_video_sizes
from tests.sessions.janus_fixture import janus, janus_bridge, requires_janus
from tests.sessions.points import (
    BRIDGE,
    hashes,
    hears,
    latest_picture,
    points,
    recording_points,
    tags_seen,
)
from tests.support import (
    eventually,
    make_controller_config,
    running_controller,
)
from tiepdan.controller.sessions.bridge import BridgeError
from tiepdan.controller.sessions.bridge.janus_bridge import JanusSession
from tiepdan.firmware import protocol
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


LIGHT = {"light_width": 320, "light_height": 180, "light_bitrate": 120_000, "light_hold": 1.0}
FULL_SIZE = (int(BRIDGE["width"]), int(BRIDGE["height"]))
LIGHT_SIZE = (int(LIGHT["light_width"]), int(LIGHT["light_height"]))


async def test_a_point_on_a_poor_downlink_gets_the_light_picture_and_records_it(
        tmp_path: Path, broker: Mosquitto, janus: Janus) -> None:
    """The rule's reports are given here (the boxes' own report rarely); the poor-link test
    drives the same switch from a real limited link and the box's own telemetry."""
    archive = Archive.create()
    devices = ["jl-host", "jl-1"]
    config = make_controller_config(tmp_path, broker,
                                    bridge={**BRIDGE, **janus_bridge(janus), **LIGHT},
                                    sessions={"invite_timeout": 5.0},
                                    archive={"record_bridge": False})
    async with running_controller(config) as controller, \
            recording_points(tmp_path, broker, devices, archive,
                             call={"qos_interval": 600.0}) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in devices), 10,
                         what="every box registered")
        session = await controller.sessions.open("jl-host", devices[1:], auto_join=True)
        poor, box = agents["jl-1"]
        host = agents["jl-host"][0]
        await eventually(lambda: all(a.call.state == "live" for a, _ in agents.values()), 40,
                         what="every point live")
        media = controller.bridge.session(session.id)
        assert isinstance(media, JanusSession)
        compositor = media.compositor
        expected = hashes(devices)

        async def receives(agent: Agent, size: tuple[int, int]) -> bool:
            picture = await latest_picture(agent)
            return (picture.width, picture.height) == size and \
                tags_seen(agent, picture).get("jl-host") == expected["jl-host"]

        await eventually(lambda: receives(poor, FULL_SIZE), 20, what="the full picture")
        assert compositor.light_encoder is None, "the light picture encoded for nobody"
        await eventually(lambda: poor.recording.status().get("segments", 0) >= 2, 30,
                         what="segments of the full picture at the box")

        def report(loss: float) -> None:
            controller.bridge.link_report(session.id, "jl-1",
                                          protocol.CallQos(loss_received=loss))

        report(0.5)
        assert media.rendition("jl-1") == "full"  # one poor report is not enough
        report(0.5)
        await eventually(lambda: receives(poor, LIGHT_SIZE), 20,
                         what="the light picture, decodable from the switch's key frame")
        assert media.rendition("jl-1") == "light"
        assert compositor.light_viewers == {"jl-1"} and compositor.light_encoder is not None
        assert await receives(host, FULL_SIZE), "the host left the full picture too"
        # The light picture moves on: the host's tag counter advances in it.
        first = compositor.light_encoder.frames
        segments = poor.recording.status().get("segments", 0)
        await eventually(lambda: poor.recording.status().get("segments", 0) >= segments + 2,
                         30, what="segments of the light picture at the box")
        assert compositor.light_encoder.frames > first
        # Clear reports for light_hold: back to the full picture; the light one stops.
        report(0.0)
        await asyncio.sleep(LIGHT["light_hold"] + 0.2)
        report(0.0)
        await eventually(lambda: receives(poor, FULL_SIZE), 20, what="the full picture back")
        assert media.rendition("jl-1") == "full"
        assert compositor.light_encoder is None and not compositor.light_viewers
        segments = poor.recording.status().get("segments", 0)
        await eventually(lambda: poor.recording.status().get("segments", 0) >= segments + 2,
                         30, what="segments of the full picture again")
        await controller.sessions.end(session.id, "test")
        await eventually(lambda: poor.recording.recorder is None, 15, what="recording stopped")
    # The box's recording across both switches verifies (hashes, chain, signatures) and every
    # segment of the copied picture plays, at the size it arrived in.
    sizes = received_video_sizes(box.state_dir, box.recording_dir, "jl-1", session.id, archive)
    changes = [size for i, size in enumerate(sizes) if i == 0 or sizes[i - 1] != size]
    assert changes[:1] == [FULL_SIZE] and LIGHT_SIZE in changes and changes[-1] == FULL_SIZE, \
        changes
