"""The idle screen, the language, the faults and a missing display, on a box with a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from tests.screen.hall import display_of, drawn, hall_box
from tests.support import eventually
from tiepdan.board.display.simulated import SimulatedDisplay
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.agent.notifier import Notifier
from tiepdan.firmware.screen.catalog import screen_translator
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.state import ScreenState
from tiepdan.firmware.screen.unenrolled import show_until_enrolled
from tiepdan.tools.broker import Mosquitto


def showing(agent: Agent, language: str = "vi") -> bool:
    """The display shows exactly what the presenter's state draws to in `language`."""
    frame = display_of(agent).latest()
    return agent.screen.state is not None and frame is not None and \
        np.array_equal(frame, drawn(agent, language))


async def test_idle_shows_the_next_session_and_switches_to_english_by_desired_state(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    async with hall_box(tmp_path, broker, "sc-idle") as box:
        await eventually(lambda: controller.registry.get("sc-idle"), 10, what="registered")
        await eventually(lambda: showing(box), 10, what="the idle screen in Vietnamese")
        empty = display_of(box).latest()
        at = protocol.now_ms() + 75 * 60_000
        upcoming = protocol.NextSession(at=at, title="Tiếp công dân định kỳ tháng 12",
                                        host_name="Ban Tiếp công dân tỉnh Nghệ An")
        await controller.set_desired("sc-idle", protocol.RemoteConfig(next_session=upcoming))
        await eventually(lambda: box.screen.state is not None
                         and box.screen.state.next_session is not None and showing(box), 10,
                         what="the next session on the idle screen")
        state = box.screen.state
        assert state is not None and state.kind == "idle" and state.next_session is not None
        assert state.next_session.at == datetime.fromtimestamp(at / 1000, box.screen.zone)
        assert state.next_session.title == upcoming.title
        layouts = Layouts((1024, 768), screen_translator("vi"))
        assert layouts.countdown(state.now, state.next_session.at).startswith("còn 1 giờ 1")
        vietnamese = display_of(box).latest()
        assert not np.array_equal(vietnamese, empty)

        await controller.set_desired("sc-idle", protocol.RemoteConfig(next_session=upcoming,
                                                                       language="en"))
        await eventually(lambda: box.screen.status()["language"] == "en" and
                         showing(box, "en"), 10, what="the idle screen in English")
        assert not np.array_equal(display_of(box).latest(), vietnamese)


async def test_a_missing_display_is_a_health_fault_and_the_agent_carries_on(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    async with hall_box(tmp_path, broker, "sc-hdmi") as box:
        await eventually(lambda: controller.registry.get("sc-hdmi"), 10, what="registered")
        display = display_of(box)
        await eventually(lambda: display.shown > 0, 10, what="a first frame")
        display.unplug()
        # Something new to show (the language) makes the presenter find the cable gone.
        await controller.set_desired("sc-hdmi", protocol.RemoteConfig(language="en"))
        await eventually(lambda: box.screen.fault is not None, 10, what="the display fault")
        await eventually(lambda: any(
            e["data"].get("code") == "display-missing" and e["data"].get("active")
            for e in controller.registry.events("sc-hdmi")), 10, what="the alarm at the controller")
        response = await controller.rpc.request("sc-hdmi", "get-status", timeout=5)
        assert response.ok and response.result["screen"]["fault"], response
        assert box.call.state == "idle" and box.link.connected

        shown = display.shown
        display.plug()
        await eventually(lambda: display.shown > shown and box.screen.fault is None, 15,
                         what="the screen back once the display is")
        await eventually(lambda: showing(box, "en"), 10, what="the idle screen in English")
        await eventually(lambda: any(
            e["data"].get("code") == "display-missing" and not e["data"].get("active")
            for e in controller.registry.events("sc-hdmi")), 10, what="the alarm cleared")


async def test_faults_show_their_screens(tmp_path: Path, broker: Mosquitto) -> None:
    async with hall_box(tmp_path, broker, "sc-disk",
                        screen={"disk_low_mb": 1_000_000}) as box:
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.fault == "disk_low" and showing(box), 10,
                         what="the disk-low screen")
        state = box.screen.state
        assert state is not None and state.free_mb is not None and state.free_mb > 0

    async with hall_box(tmp_path, broker, "sc-ota") as box:
        await eventually(lambda: box.screen.state is not None, 10, what="a first screen")
        box.ota._step = "installing"  # the update client's own step, as an install sets it
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.fault == "updating" and showing(box), 10,
                         what="the updating screen")
        box.ota._step = "idle"
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.kind == "idle", 10, what="idle after the update")

    async with hall_box(tmp_path, broker, "sc-net", screen={"offline_after": 0.5}) as box:
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.kind == "idle", 10, what="idle")
        broker.kill()
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.fault == "unreachable" and showing(box), 15,
                         what="the unreachable screen")
        assert box.screen.state is not None and box.screen.state.offline_since is not None
        broker.start()
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.kind == "idle" and showing(box), 20,
                         what="idle once the broker is back")


async def test_a_box_not_enrolled_shows_what_to_do_until_it_is(tmp_path: Path,
                                                               broker: Mosquitto) -> None:
    from tests.support import make_agent_config

    config: AgentConfig = make_agent_config(tmp_path, broker, "sc-new",
                                            mqtt={"tls": True})
    display = SimulatedDisplay(1280, 720)
    certificate = config.tls_file(config.mqtt.cert_file, "device.pem")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    systemd.setblocking(False)
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    waiting = asyncio.create_task(show_until_enrolled(config, display, certificate, poll=0.05,
                                                      notifier=notifier))
    await eventually(lambda: display.latest() is not None, 10, what="the not-enrolled screen")
    frame = display.latest()
    assert frame is not None
    zone = ZoneInfo(config.screen.timezone)
    now = datetime.now(zone)
    state = ScreenState(kind="fault", fault="not_enrolled", hall=config.device.name,
                        commune=config.device.commune, device="sc-new",
                        now=now.replace(second=0, microsecond=0))
    expected = np.asarray(Layouts((1280, 720), screen_translator("vi")).draw(state))
    assert np.array_equal(frame, expected) or datetime.now(zone).minute != now.minute
    assert not waiting.done()
    await asyncio.sleep(0.2)
    said = []
    with contextlib.suppress(BlockingIOError):
        while True:
            said.append(systemd.recv(4096).decode())
    systemd.close()
    assert said[0].startswith("READY=1"), said  # up, not a start that never ends
    assert "WATCHDOG=1" in said[1:], said
    certificate.parent.mkdir(parents=True)
    certificate.write_text("issued by enrollment")
    await asyncio.wait_for(waiting, 5)
    assert display.mode is None, "the display was not let go for the agent"


async def test_the_controller_announces_the_next_scheduled_session_to_the_halls(
        tmp_path: Path, broker: Mosquitto) -> None:
    from tests.sessions.points import points, session_controller

    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, ["sc-chair"]), \
            hall_box(tmp_path, broker, "sc-hall") as box:
        await eventually(lambda: controller.registry.get("sc-hall") and
                         controller.registry.get("sc-chair"), 10, what="both registered")
        # A setting the admin made before must survive the announcement.
        await controller.set_desired("sc-hall", protocol.RemoteConfig(volume=35))
        at = time.time() + 2 * 3600
        later = await controller.sessions.open("sc-chair", ["sc-hall"], title="Phiên sau",
                                               at=at + 86400)
        first = await controller.sessions.open("sc-chair", ["sc-hall"], title="Phiên tháng 12",
                                               at=at)
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.next_session is not None and
                         box.screen.state.next_session.title == "Phiên tháng 12" and
                         showing(box), 15, what="the next session on the hall's screen")
        state = box.screen.state
        assert state is not None and state.next_session is not None
        assert abs(state.next_session.at.timestamp() - at) < 1
        assert state.next_session.host_name == "UBND sc-chair"
        assert box.screen.sounds.volume == 35, "the announcement dropped the admin's volume"

        await controller.sessions.end(first.id, "cancelled")
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.next_session is not None and
                         box.screen.state.next_session.title == "Phiên sau", 15,
                         what="the following session once the first is cancelled")
        await controller.sessions.end(later.id, "cancelled")
        await eventually(lambda: box.screen.state is not None and
                         box.screen.state.next_session is None and showing(box), 15,
                         what="no session scheduled")


async def test_outside_office_hours_the_screen_dims_or_blanks_and_cec_follows(
        tmp_path: Path, broker: Mosquitto, controller: Controller,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tiepdan.firmware.screen.care import apply_level

    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime.now(zone)
    closed = f"{(now.hour + 2) % 24:02d}:00-{(now.hour + 3) % 24:02d}:00"  # not now
    all_days = list(range(1, 8))
    async with hall_box(tmp_path, broker, "sc-dim", screen={
            "office_hours": closed, "office_days": all_days, "outside_hours": "dim",
            "dim": 0.25}) as box:
        def dimmed() -> bool:
            frame = display_of(box).latest()
            return box.screen.state is not None and frame is not None and \
                box.screen.level == "dim" and \
                np.array_equal(frame, apply_level(drawn(box), "dim", 0.25))
        await eventually(dimmed, 10, what="the dimmed idle screen")

    # Blank, with HDMI-CEC through a cec-ctl that notes what it was asked (the TV's side).
    calls = tmp_path / "cec-calls"
    fake = tmp_path / "bin" / "cec-ctl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    async with hall_box(tmp_path, broker, "sc-blank", screen={
            "office_hours": closed, "office_days": all_days, "outside_hours": "blank",
            "cec": True}) as box:
        display = display_of(box)
        await eventually(lambda: box.screen.level == "blank" and display.latest() is not None
                         and not display.latest().any(), 10,  # type: ignore[union-attr]
                         what="a blank screen")
        await eventually(lambda: calls.exists() and "--standby" in calls.read_text(), 10,
                         what="the TV sent to standby")
        assert "--to 0 --standby" in calls.read_text()
        # Office hours set by the controller (desired state) light it again, and wake the TV.
        await eventually(lambda: controller.registry.get("sc-blank"), 10, what="registered")
        open_now = f"{now.hour:02d}:00-{(now.hour + 1) % 24:02d}:00"
        await controller.set_desired("sc-blank", protocol.RemoteConfig(office_hours=open_now))
        await eventually(lambda: box.screen.level == "on" and showing(box), 10,
                         what="the screen lit again")
        await eventually(lambda: "--image-view-on" in calls.read_text(), 10,
                         what="the TV woken")
