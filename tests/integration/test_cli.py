"""The central admin's CLI, run as a separate program against the running controller."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import tomli_w

from tests.support import eventually, make_agent_config, running_agent
from tiepdan.controller.service import Controller
from tiepdan.tools.broker import Mosquitto


async def cli(config: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tiepdan.controller", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


def config_file(tmp_path: Path, controller: Controller) -> Path:
    c = controller.config
    path = tmp_path / "controller.toml"
    path.write_text(tomli_w.dumps({
        "controller": {"id": c.controller.id, "data_dir": c.controller.data_dir},
        "http": {"host": c.http.host, "port": c.http.port},
    }))
    return path


async def test_admin_cli_end_to_end(tmp_path: Path, broker: Mosquitto,
                                    controller: Controller) -> None:
    config = config_file(tmp_path, controller)
    async with running_agent(make_agent_config(
            tmp_path, broker, "xa-cli", device={"name": "UBND xã Nghĩa Đàn"})) as box:
        await eventually(lambda: (d := controller.registry.get("xa-cli")) and d.online
                         and d.health, what="online with health")
        code, out = await cli(config, "devices")
        assert code == 0 and "xa-cli" in out and "UBND xã Nghĩa Đàn" in out and "1/1 online" in out

        code, out = await cli(config, "devices", "--json")
        assert code == 0 and json.loads(out)[0]["state"] == "ready"

        await asyncio.to_thread(box.agent.panel.press, "call")
        await eventually(lambda: controller.registry.events("xa-cli"), what="the press")
        code, out = await cli(config, "show", "xa-cli")
        shown = json.loads(out)
        assert code == 0 and shown["events"][0]["data"]["button"] == "call"

        code, out = await cli(config, "cmd", "xa-cli", "collect-logs", "lines=5")
        assert code == 0 and len(json.loads(out)["result"]["lines"]) <= 5

        code, out = await cli(config, "cmd", "xa-cli", "nonsense")
        assert code == 1 and "unknown_command" in out

        code, out = await cli(config, "set-config", "xa-cli", "telemetry_interval=5",
                              "--wait", "10")
        assert code == 0, out
        assert box.agent.telemetry.interval == 5

        code, out = await cli(config, "set-config", "xa-cli", "telemetry_interval=0")
        assert code == 1 and "telemetry_interval" in out

        code, out = await cli(config, "show", "xa-absent")
        assert code == 1 and "no device" in out


async def test_cli_without_a_running_controller_says_so(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text(tomli_w.dumps({"controller": {"data_dir": str(tmp_path / "none")}}))
    code, out = await cli(config, "devices")
    assert code == 1 and "has the controller started?" in out
