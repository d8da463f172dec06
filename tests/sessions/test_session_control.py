"""Buttons, LEDs and the host ending a session: what an officer does, what the boxes do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.sessions.points import points, session_controller
from tests.support import eventually
from tiepdan.firmware.agent.agent import Agent
from tiepdan.tools.broker import Mosquitto


async def press(agent: Agent, button: str) -> None:
    await asyncio.to_thread(agent.panel.press, button)  # type: ignore[attr-defined]


def led(agent: Agent, name: str) -> Any:
    return agent.panel.led_state(name)  # type: ignore[attr-defined]


async def test_buttons_drive_join_mute_and_end_and_leds_follow(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    devices = ["bt-host", "bt-1"]
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, devices) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in devices), 10,
                         what="boxes registered")
        session = await controller.sessions.open("bt-host", ["bt-1"])
        guest, host = agents["bt-1"], agents["bt-host"]
        await eventually(lambda: led(guest, "in_call") == "blink", 10, what="invited blink")
        await eventually(lambda: controller.sessions.point(session.id, "bt-1").state
                         == "ringing", 5, what="controller knows the box rings")
        assert guest.call.state == "invited" and not guest.holds
        await press(host, "call")
        await press(guest, "call")
        await eventually(lambda: guest.call.state in ("joining", "live"), 5, what="joining")
        await eventually(lambda: led(guest, "in_call") == "on", 30, what="in-call LED on")
        assert "session" in guest.holds
        await eventually(lambda: controller.sessions.get(session.id).state == "live", 10,
                         what="session live once the host is in")
        await press(guest, "mute")
        await eventually(lambda: led(guest, "muted") == "on", 5, what="muted LED on")
        await eventually(lambda: (controller.registry.get("bt-1").extra.get("call") or {})
                         .get("muted") is True, 5, what="mute reported")
        await press(guest, "mute")
        await eventually(lambda: led(guest, "muted") == "off", 5, what="muted LED off")
        await press(guest, "end")
        await eventually(lambda: guest.call.state == "idle", 5, what="guest left")
        assert led(guest, "in_call") == "off" and led(guest, "muted") == "off"
        assert "session" not in guest.holds
        await eventually(lambda: controller.sessions.point(session.id, "bt-1").state == "left",
                         5, what="controller sees the guest leave")
        assert controller.sessions.get(session.id).state == "live"  # the host stays


async def test_end_while_ringing_declines(tmp_path: Path, broker: Mosquitto) -> None:
    devices = ["dc-host", "dc-1"]
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, devices) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in devices), 10,
                         what="boxes registered")
        session = await controller.sessions.open("dc-host", ["dc-1"])
        await eventually(lambda: agents["dc-1"].call.state == "invited", 10, what="ringing")
        await press(agents["dc-1"], "end")
        await eventually(lambda: controller.sessions.point(session.id, "dc-1").state
                         == "declined", 5, what="declined")
        assert led(agents["dc-1"], "in_call") == "off"


async def test_host_ends_the_session_and_every_box_leaves_and_reports(
        tmp_path: Path, broker: Mosquitto) -> None:
    devices = ["he-host", "he-1", "he-2"]
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, devices) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in devices), 10,
                         what="boxes registered")
        transitions: list[tuple[str | None, str]] = []
        controller.sessions.listen(lambda s, old, new: transitions.append((old, new)))
        session = await controller.sessions.open("he-host", devices[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every point live")
        left: list[str] = []
        for device, agent in agents.items():
            agent.call.on_left(lambda s, device=device: left.append(device))
        await press(agents["he-host"], "end")
        await eventually(lambda: controller.sessions.get(session.id).state == "ended", 10,
                         what="session ended")
        assert controller.sessions.get(session.id).end_reason == "host"
        await eventually(lambda: all(a.call.state == "idle" for a in agents.values()), 10,
                         what="every box left")
        await eventually(lambda: all((controller.registry.get(d).extra.get("call") or {})
                                     .get("state") == "idle" for d in devices), 10,
                         what="every box reported idle")
        assert sorted(left) == sorted(devices)
        assert all(led(a, "in_call") == "off" for a in agents.values())
        assert transitions == [(None, "inviting"), ("inviting", "live"), ("live", "ended")]
        assert all(p.state == "left" for p in controller.sessions.points(session.id))
        assert controller.bridge.session(session.id) is None


async def test_a_box_restarted_mid_session_is_invited_again_and_rejoins(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, ["rs-host"]) as hosts:
        async with points(tmp_path, broker, ["rs-1"]) as guests:
            await eventually(lambda: controller.registry.get("rs-1"), 10, what="registered")
            session = await controller.sessions.open("rs-host", ["rs-1"], auto_join=True)
            await eventually(lambda: controller.sessions.point(session.id, "rs-1").state
                             == "live", 30, what="guest live")
            before = controller.sessions.point(session.id, "rs-1").attempt
            assert guests["rs-1"].call.attempt == before
        # The guest's agent is gone (power cut); the bridge notices the silence.
        await eventually(lambda: controller.sessions.point(session.id, "rs-1").state
                         == "away", 10, what="guest away")
        async with points(tmp_path, broker, ["rs-1"]) as guests:
            await eventually(lambda: controller.sessions.point(session.id, "rs-1").state
                             == "live", 30, what="guest rejoined after its restart")
            assert controller.sessions.point(session.id, "rs-1").attempt > before
            await eventually(lambda: guests["rs-1"].call.state == "live", 10,
                             what="restarted box live")
        assert hosts["rs-host"].call.state == "live"
