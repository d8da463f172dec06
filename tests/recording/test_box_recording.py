"""The box's recording inside a real agent on a real broker: LED, hold, alarms, disk policy.

The call's four fanouts are fed by the test in real time (as a live call would feed them), and
the recording follows `begin`/`end` as it follows the call's `on_live`/`on_left`. A full disk
is injected at the recording's OS seam (`agent.recording.fs`).
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import msgspec

from tests.recording.rec_support import (
    Archive,
    Sources,
    decrypt_segment,
    plaintext_free,
    verified_records,
)
from tests.support import Observer, eventually, make_agent_config, running_agent
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.sealer import FileSystem
from tiepdan.tools.broker import Mosquitto

DEVICE = "box-rec"


def feed(agent: Agent) -> Sources:
    """Media as a live call would publish it, into the call client's own fanouts."""
    sources = Sources(None, keyframe_interval=0.5)
    sources.sent_video = agent.call.sent_video
    sources.sent_audio = agent.call.sent_audio
    sources.received_video = agent.call.received_video
    sources.received_audio = agent.call.received_audio
    return sources


def alarms(observer: Observer) -> list[protocol.RecordingAlarm]:
    found = []
    for message in observer.on(protocol.event_topic(DEVICE, "recording")):
        event = protocol.decode(message.payload, protocol.Event)
        assert isinstance(event.data, protocol.RecordingAlarm)
        found.append(event.data)
    return found


class FullAfter(FileSystem):
    def __init__(self, segments: int) -> None:
        self.left = segments

    def rename(self, source: Path, target: Path) -> None:
        if self.left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= 1
        super().rename(source, target)


async def test_a_session_is_recorded_sealed_and_signed(tmp_path: Path,
                                                       broker: Mosquitto) -> None:
    archive = Archive.create()
    config = make_agent_config(tmp_path, broker, DEVICE, recording={"segment_seconds": 1.0,
                                                                    "reserve_mb": 0})
    archive.install_on_box(config.state_dir)
    async with running_agent(config) as box:
        agent = box.agent
        sources = feed(agent)
        player = asyncio.create_task(sources.play(3600))
        agent.recording.begin("s-one")
        await eventually(lambda: agent.recording.recording, 10, what="recording")
        assert agent.panel.led_states()["recording"] == "on"
        assert "recording" in agent.holds and "recording" in agent.capabilities
        await eventually(lambda: agent.recording.status().get("segments", 0) >= 2, 15,
                         what="two sealed segments")
        agent.recording.begin("s-one")  # a rejoin changes nothing
        agent.recording.end("s-one")
        await eventually(lambda: not agent.recording.recording and
                         agent.recording.recorder is None, 10, what="stopped")
        player.cancel()
        assert agent.panel.led_states()["recording"] == "off"
        assert "recording" not in agent.holds
    key = Identity(config.state_dir).signing_key()
    directory = config.recording_dir / "s-one"
    records = verified_records(directory, DEVICE, "s-one", key)
    assert [r.kind for r in records][-1] == "stop"
    for record in records:
        if record.segment is not None:
            decrypt_segment(directory, record, archive)
    assert plaintext_free(config.recording_dir) == []


async def test_no_signed_recipients_means_no_recording_and_an_alarm(
        tmp_path: Path, broker: Mosquitto) -> None:
    config = make_agent_config(tmp_path, broker, DEVICE)
    async with running_agent(config) as box, Observer(broker, "obs") as observer:
        await observer.link.subscribe((protocol.device_filter(DEVICE, "evt/#"), 1))
        agent = box.agent
        agent.recording.begin("s-two")
        await eventually(lambda: alarms(observer), 10, what="an alarm")
        assert alarms(observer)[0].code == "no_recipients"
        assert not agent.recording.recording
        assert agent.panel.led_states()["recording"] == "pulse_error"
    assert not (config.recording_dir / "s-two").exists()


async def test_a_full_disk_stops_cleanly_with_alarm_and_error_light(
        tmp_path: Path, broker: Mosquitto) -> None:
    archive = Archive.create()
    config = make_agent_config(tmp_path, broker, DEVICE, recording={
        "segment_seconds": 0.5, "reserve_mb": 0, "max_session_minutes": 24 * 60})
    archive.install_on_box(config.state_dir)
    async with running_agent(config) as box, Observer(broker, "obs") as observer:
        await observer.link.subscribe((protocol.device_filter(DEVICE, "evt/#"), 1))
        agent = box.agent
        agent.recording.fs = FullAfter(2)
        # A huge bitrate estimate makes the pre-session check fail: a warning, not a refusal.
        agent.recording.measured_bps = 1e12
        sources = feed(agent)
        player = asyncio.create_task(sources.play(3600))
        agent.recording.begin("s-full")
        await eventually(lambda: [a for a in alarms(observer) if a.code == "disk_full"], 15,
                         what="the disk_full alarm")
        await eventually(lambda: agent.recording.recorder is None, 10, what="released")
        assert [a.code for a in alarms(observer)] == ["disk_low", "disk_full"]
        full = alarms(observer)[1]
        assert full.severity == "critical" and full.session == "s-full" and full.segments == 2
        assert agent.panel.led_states()["recording"] == "pulse_error"
        assert "recording" not in agent.holds
        status = await agent._cmd_status({})
        assert status["recording"]["alarm"] == "disk_full"
        agent.recording.begin("s-full")  # a rejoin does not restart onto the full disk
        await asyncio.sleep(0.3)
        assert agent.recording.recorder is None
        player.cancel()
    directory = config.recording_dir / "s-full"
    key = Identity(config.state_dir).signing_key()
    records = verified_records(directory, DEVICE, "s-full", key)
    kinds = [r.kind for r in records]
    assert kinds[:2] == ["start", "disk_low"] and kinds[-2:] == ["disk_low", "stop"]
    assert records[-2].detail["reason"] == "disk_full"
    assert sorted(p.name for p in directory.glob("*.age")) == ["000000.mkv.age",
                                                               "000001.mkv.age"]
    for record in records:
        if record.segment is not None:
            decrypt_segment(directory, record, archive)
    assert not list(directory.glob("*.tmp"))


async def test_recovery_on_agent_start_cuts_the_torn_tail_and_removes_tmp(
        tmp_path: Path, broker: Mosquitto) -> None:
    archive = Archive.create()
    config = make_agent_config(tmp_path, broker, DEVICE, recording={"segment_seconds": 0.5,
                                                                    "reserve_mb": 0})
    archive.install_on_box(config.state_dir)
    async with running_agent(config) as box:
        sources = feed(box.agent)
        player = asyncio.create_task(sources.play(3600))
        box.agent.recording.begin("s-torn")
        await eventually(lambda: box.agent.recording.status().get("segments", 0) >= 1, 15,
                         what="a segment")
        player.cancel()
        recorder = box.agent.recording.recorder
        assert recorder is not None
        await recorder._halt_tracks()  # a crash: no stop record
        box.agent.recording.recorder = None
    directory = config.recording_dir / "s-torn"
    with (directory / "manifest.jsonl").open("ab") as manifest:
        manifest.write(b'{"v":1,"seq":99,"kind":"segm')  # a torn line
    (directory / "000099.mkv.age.tmp").write_bytes(b"age-encryption.org/v1\n-> X25519")
    async with running_agent(config, connect=False):
        pass
    key = Identity(config.state_dir).signing_key()
    records = verified_records(directory, DEVICE, "s-torn", key)
    recovered = records[-1]
    assert recovered.kind == "recovered"
    assert recovered.detail["tmp_removed"] == 1 and recovered.detail["clean_stop"] is False
    assert int(recovered.detail["torn_bytes"]) == len(b'{"v":1,"seq":99,"kind":"segm')
    assert not list(directory.glob("*.tmp"))
    assert msgspec.json.decode((directory / "manifest.jsonl").read_bytes().split(b"\n")[-2])
