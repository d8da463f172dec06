"""Commands from a box's page, answered by a real agent on the simulated board."""

from __future__ import annotations

import html
from pathlib import Path

from tests.controller.console_support import Browser, console_controller
from tests.support import eventually, make_agent_config, running_agent
from tiepdan.tools.broker import Mosquitto


async def test_technician_pings_and_self_tests_a_box(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, \
            running_agent(make_agent_config(tmp_path, broker, "xa-tu-kiem")), Browser(c) as b:
        await eventually(lambda: c.registry.get("xa-tu-kiem") is not None, 10)
        await b.login("kythuat")
        await b.get("/fleet/xa-tu-kiem")
        status, page = await b.post("/fleet/xa-tu-kiem/command", {"command": "ping"})
        assert status == 200 and "pong" in page
        status, page = await b.post("/fleet/xa-tu-kiem/command", {"command": "self-test"})
        text = html.unescape(page)
        assert status == 200 and '"ok": true' in text
        for part in ("camera", "microphone", "speaker", "panel"):
            assert f'"name": "{part}"' in text
        status, page = await b.post("/fleet/xa-tu-kiem/command", {"command": "rm -rf /"})
        assert status == 400 and "Lệnh không hợp lệ" in page
        commands = [e.detail["command"] for e in c.people.audit.recent()
                    if e.action == "fleet.command"]
        assert sorted(commands) == ["ping", "self-test"]
