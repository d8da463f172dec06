"""The `self-test` command: the board's own self-test (camera, microphone, speaker, panel),
run on request from the console's box page. Refused while the box is in a call, which holds
the camera and the audio devices."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tiepdan.board.panel import Panel
from tiepdan.board.selftest import run_selftest
from tiepdan.errors import Conflict
from tiepdan.firmware import protocol

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent


async def self_test(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    protocol.convert(args, protocol.NoArgs)
    if agent.call.state != "idle":
        raise Conflict(code="busy", message=f"in a call ({agent.call.state}); the self-test "
                                            "needs the camera and audio devices")
    panel = agent.panel if isinstance(agent.panel, Panel) else None
    report = await run_selftest(agent.profile, panel, label=agent.device)
    return {"ok": report.ok, "profile": report.profile,
            "parts": [asdict(part) for part in report.parts]}
