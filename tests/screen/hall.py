"""A commune box with a simulated HDMI display, and ways to read what its hall sees."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from tests.sessions.points import point_name, small_profile
from tests.support import make_agent_config, running_agent
from tiepdan.board.camera.tag import read_tag
from tiepdan.board.display import Rgb
from tiepdan.board.display.simulated import SimulatedDisplay
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.tools.broker import Mosquitto

# 4:3, so the 16:9 composed picture is letterboxed with bars above and below.
SCREEN = {"display": "simulated", "width": 1024, "height": 768, "office_hours": "",
          "after_seconds": 2.0, "chime_every": 1.0}


@contextlib.asynccontextmanager
async def hall_box(tmp_path: Path, broker: Mosquitto, device: str,
                   **sections: Any) -> AsyncIterator[Agent]:
    profile = str(small_profile(tmp_path))
    screen = {**SCREEN, **sections.pop("screen", {})}
    config = make_agent_config(
        tmp_path, broker, device, board={"profile": profile},
        device={"name": point_name(device)}, screen=screen,
        call={"media_timeout": 1.5, "join_timeout": 8.0, "qos_interval": 1.0,
              "video_bitrate": 300_000}, **sections)
    async with running_agent(config, profile_name=profile) as running:
        yield running.agent


def display_of(agent: Agent) -> SimulatedDisplay:
    display = agent.screen.display
    assert isinstance(display, SimulatedDisplay)
    return display


def luma(frame: Rgb) -> np.ndarray[Any, Any]:
    """BT.601 luma of an RGB frame, as the tag reader expects (tags are black and white)."""
    rgb = frame.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def tags_on_screen(agent: Agent) -> dict[str, int]:
    """Which points' tags the hall's screen shows: device -> label hash, per layout tile."""
    layout = agent.call.layout
    renderer = agent.screen.renderer
    frame = display_of(agent).latest()
    if layout is None or renderer is None or renderer.placement is None or frame is None:
        return {}
    place = renderer.placement
    sx, sy = place.width / layout.width, place.height / layout.height
    y = luma(frame)
    found = {}
    for tile in layout.tiles:
        top, left = place.y + round(tile.y * sy), place.x + round(tile.x * sx)
        region = y[top:top + round(tile.height * sy), left:left + round(tile.width * sx)]
        tag = read_tag(region)
        if tag is not None:
            found[tile.device] = tag.label_hash
    return found


def drawn(agent: Agent, language: str = "vi") -> Rgb:
    """The frame the presenter's current state should look like, drawn afresh."""
    from tiepdan.firmware.screen.catalog import screen_translator

    state = agent.screen.state
    display = display_of(agent)
    assert state is not None and display.mode is not None
    return np.asarray(Layouts(display.mode, screen_translator(language)).draw(state),
                      dtype=np.uint8)
