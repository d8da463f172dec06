"""The box records the composed picture as it arrives: the bridge's H.264, copied, never
decoded and encoded again (unless `recording.received = "reencode"`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import av

from tests.recording.rec_support import Archive, decrypt_segment, verified_records
from tests.sessions.points import BRIDGE, point_name, small_profile
from tests.support import (
    eventually,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.tools.broker import Mosquitto

DEVICES = ["rc-host", "rc-1"]


async def test_the_received_picture_is_recorded_as_it_arrives(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    archive = Archive.create()
    profile = str(small_profile(tmp_path))
    config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                    sessions={"invite_timeout": 5.0},
                                    archive={"record_bridge": False})
    async with running_controller(config) as controller, contextlib.AsyncExitStack() as stack:
        agents = {}
        for device in DEVICES:
            box = make_agent_config(
                tmp_path, broker, device, board={"profile": profile},
                device={"name": point_name(device)},
                call={"media_timeout": 3.0, "join_timeout": 8.0, "video_bitrate": 300_000},
                # Were it re-encoded, the received picture would be this size, not the bridge's.
                recording={"segment_seconds": 1.0, "reserve_mb": 0, "received_width": 320,
                           "received_height": 180})
            archive.install_on_box(box.state_dir)
            running = await stack.enter_async_context(running_agent(box, profile_name=profile))
            agents[device] = (running.agent, box)
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
    directory = box.recording_dir / session.id
    records = verified_records(directory, "rc-1", session.id,
                               Identity(box.state_dir).signing_key())
    sizes = set()
    for record in records:
        if record.segment is None:
            continue
        with av.open(io.BytesIO(decrypt_segment(directory, record, archive))) as container:
            for stream in container.streams.video:
                if stream.metadata.get("title") == "received-video":
                    sizes.add((stream.codec_context.width, stream.codec_context.height))
                    frames = sum(1 for _ in container.decode(stream))
                    assert frames > 0
    assert sizes == {(BRIDGE["width"], BRIDGE["height"])}
