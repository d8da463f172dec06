"""Points of a test session: in-process agents on a small simulated board, and what they see."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.recording.rec_support import Archive
from tests.support import (
    database_settings,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.board.audio.synthetic import dominant_tones, tone_for
from tiepdan.board.camera.tag import label_hash, read_tag
from tiepdan.controller.service import Controller
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.tools.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
# Small pictures keep four peers and a bridge within a shared 2-core machine; the tag and the
# tones do not care about size.
CAMERA = {"width": 320, "height": 180, "fps": 10}
BRIDGE = {"width": 640, "height": 360, "fps": 10, "bitrate": 600_000, "media_timeout": 2.0,
          "connect_timeout": 8.0}


def small_profile(tmp_path: Path) -> Path:
    text = (ROOT / "board" / "profiles" / "sim.toml").read_text()
    for key, value in CAMERA.items():
        text = text.replace(f"{key} = {dict(width=640, height=360, fps=15)[key]}",
                            f"{key} = {value}", 1)
    path = tmp_path / "small-sim.toml"
    path.write_text(text)
    return path


def point_name(device: str) -> str:
    return f"UBND {device}"


def controller_config(tmp_path: Path, broker: Mosquitto, database: Path | str = "",
                      **sessions: Any) -> Any:
    return make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                  database=database_settings(database),
                                  sessions={"invite_timeout": 5.0, **sessions})


@contextlib.asynccontextmanager
async def _boxes(tmp_path: Path, broker: Mosquitto, devices: list[str], call: dict[str, Any],
                 recording: dict[str, Any], archive: Archive | None = None
                 ) -> AsyncIterator[dict[str, tuple[Agent, AgentConfig]]]:
    profile = str(small_profile(tmp_path))
    async with contextlib.AsyncExitStack() as stack:
        agents = {}
        for device in devices:
            box = make_agent_config(tmp_path, broker, device, board={"profile": profile},
                                    device={"name": point_name(device)}, call=call,
                                    recording=recording)
            if archive is not None:
                archive.install_on_box(box.state_dir)
            running = await stack.enter_async_context(running_agent(box, profile_name=profile))
            agents[device] = (running.agent, box)
        yield agents


@contextlib.asynccontextmanager
async def recording_points(tmp_path: Path, broker: Mosquitto, devices: list[str],
                           archive: Archive, *, call: dict[str, Any] | None = None,
                           recording: dict[str, Any] | None = None
                           ) -> AsyncIterator[dict[str, tuple[Agent, AgentConfig]]]:
    """Boxes that record for real (the archive's signed recipients installed on each, 1 s
    segments), with their configuration, to find and verify what they recorded."""
    async with _boxes(tmp_path, broker, devices,
                      {"media_timeout": 3.0, "join_timeout": 8.0, "video_bitrate": 300_000,
                       **(call or {})},
                      {"segment_seconds": 1.0, "reserve_mb": 0, **(recording or {})},
                      archive) as agents:
        yield agents


@contextlib.asynccontextmanager
async def points(tmp_path: Path, broker: Mosquitto, devices: list[str],
                 recording: dict[str, Any] | None = None,
                 **call: Any) -> AsyncIterator[dict[str, Agent]]:
    """`recording`: the boxes' `[recording]` settings (e.g. `archive_url`), to record."""
    async with _boxes(tmp_path, broker, devices,
                      {"media_timeout": 1.5, "join_timeout": 8.0, "qos_interval": 1.0,
                       "video_bitrate": 300_000, **call}, recording or {}) as agents:
        yield {device: agent for device, (agent, _) in agents.items()}


@contextlib.asynccontextmanager
async def session_controller(tmp_path: Path, broker: Mosquitto,
                             **sessions: Any) -> AsyncIterator[Controller]:
    async with running_controller(controller_config(tmp_path, broker, **sessions)) as c:
        yield c


def tags_seen(agent: Agent, frame: av.VideoFrame) -> dict[str, int]:
    """Which points' tags a composed picture shows: device -> label hash, per layout tile
    (scaled: a light rendition of the picture is smaller than the layout says)."""
    layout = agent.call.layout
    assert layout is not None, "no layout received"
    luma = frame.to_ndarray()[: frame.height]
    sx, sy = frame.width / layout.width, frame.height / layout.height
    found = {}
    for tile in layout.tiles:
        x, y = round(tile.x * sx), round(tile.y * sy)
        tag = read_tag(luma[y:y + round(tile.height * sy), x:x + round(tile.width * sx)])
        if tag is not None:
            found[tile.device] = tag.label_hash
    return found


async def latest_picture(agent: Agent, timeout: float = 5.0) -> av.VideoFrame:
    subscription = agent.call.received_video.subscribe("test", capacity=2)
    try:
        frame = await asyncio.wait_for(subscription.get(), timeout)
        assert frame is not None
        return frame
    finally:
        subscription.close()


def hashes(devices: list[str]) -> dict[str, int]:
    return {d: label_hash(point_name(d)) for d in devices}


def heard(agent: Agent, seconds: float = 1.0) -> list[float]:
    speaker = agent.call.speaker
    assert speaker is not None
    return dominant_tones(speaker.samples(seconds), speaker.rate)


def hears(agent: Agent, device: str, seconds: float = 1.0) -> bool:
    tone = tone_for(device)
    return any(abs(f - tone) < 8 for f in heard(agent, seconds))


def level(samples: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0
