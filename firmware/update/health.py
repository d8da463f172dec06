"""The health check a new version must pass before it is committed.

Agent up (this code runs inside it and its sensors answer), broker reached, and the
board's self-test (camera, microphone, speaker, buttons) passing: the same parts a reception
session needs. Returns None when healthy, else why not, in words for the admin.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tiepdan.board.panel import Panel
from tiepdan.board.selftest import run_selftest

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent


async def check(agent: Agent, timeout: float) -> str | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await agent.link.wait_connected(timeout)
    except TimeoutError:
        return f"broker not reached within {timeout:g} s"
    panel = agent.panel if isinstance(agent.panel, Panel) else None
    report = await run_selftest(agent.profile, panel, label=agent.device,
                                timeout=max(1.0, min(10.0, deadline - loop.time())))
    failed = [f"{p.name}: {p.detail}" for p in report.parts if not p.ok]
    if failed:
        return "self-test failed: " + "; ".join(failed)
    try:
        await agent.telemetry.read()
    except Exception as exc:  # the check reports faults; it must not become one
        return f"health sensors unreadable: {type(exc).__name__}: {exc}"
    if not agent.link.connected:
        return "broker connection lost during the health check"
    return None
