"""The box records the composed picture as it arrives: the bridge's H.264, copied, never
decoded and encoded again (unless `recording.received = "reencode"`)."""

from __future__ import annotations

from pathlib import Path

from tests.recording.rec_support import Archive, received_video_sizes
from tests.sessions.points import BRIDGE, recording_points
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.tools.broker import Mosquitto

DEVICES = ["rc-host", "rc-1"]


async def test_the_received_picture_is_recorded_as_it_arrives(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    archive = Archive.create()
    config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                    sessions={"invite_timeout": 5.0},
                                    archive={"record_bridge": False})
    # Were it re-encoded, the received picture would be 320x180, not the bridge's size.
    async with running_controller(config) as controller, \
            recording_points(tmp_path, broker, DEVICES, archive,
                             recording={"received_width": 320,
                                        "received_height": 180}) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in DEVICES), 10,
                         what="every box registered")
        session = await controller.sessions.open("rc-host", DEVICES[1:], auto_join=True)
        agent, box = agents["rc-1"]
        await eventually(lambda: agent.recording.status().get("segments", 0) >= 3, 30,
                         what="three sealed segments at the box")
        recorder = agent.recording.recorder
        assert recorder is not None
        assert [t.mode for t in recorder.tracks][2] == "copy"
        assert all(encoder is None for encoder in recorder._h264), "the box re-encoded"
        await controller.sessions.end(session.id, "test")
        await eventually(lambda: agent.recording.recorder is None, 15, what="recording stopped")
    sizes = received_video_sizes(box.state_dir, box.recording_dir, "rc-1", session.id, archive)
    assert set(sizes) == {(BRIDGE["width"], BRIDGE["height"])}
