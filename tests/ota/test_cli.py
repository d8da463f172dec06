"""`tiepdan-ota` end to end: keys, build, publish, rotate, image, and a campaign followed live."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import tomli_w

from tests.ota.harness import box_settings
from tests.support import (
    ROOT,
    admit_box,
    eventually,
    init_ca,
    make_controller_config,
    running_controller,
)
from tiepdan.board.profile import load_profile
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.update import boot
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.bench.fleet import CannedSensors, QuietPanel
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.simbox import SimBox, stop_all

pytestmark = pytest.mark.timeout(300)  # whole updates, on a shared 2-core machine


CLI = [sys.executable, "-m", "tiepdan.controller.cli.ota"]


def ota(*args: str, config: Path | None = None, cli: list[str] = CLI) -> str:
    argv = [*cli, *(["--config", str(config)] if config else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                            cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_admin_workflow_from_keys_to_a_finished_campaign(
        tmp_path: Path, broker: Mosquitto) -> None:
    config = make_controller_config(tmp_path, broker, ota={"tick": 0.2})
    init_ca(config)  # boxes fetch updates from the controller's box listener
    toml = tmp_path / "controller.toml"
    toml.write_text(tomli_w.dumps(msgspec.to_builtins(config)))
    usb1, usb2 = tmp_path / "usb1", tmp_path / "usb2"
    out = ota("keys", "init", "--root-keys", str(usb1), "--root-keys", str(usb2),
              "--root-count", "3", "--root-threshold", "2", config=toml)
    assert "root      2 of 3 key(s)" in out
    assert len(list(usb1.glob("root-*.pem"))) == 2 and len(list(usb2.glob("root-*.pem"))) == 1
    out = ota("build", "--version", "2.0.0", "--source", str(ROOT), "--out",
              str(tmp_path / "dist"))
    assert "version 2.0.0" in out
    base = tmp_path / "dist" / "base"
    ota("build", "--version", "1.9.0", "--source", str(ROOT), "--out", str(base))
    out = ota("publish", str(tmp_path / "dist" / "tiepdan-2.0.0.tar"), config=toml)
    assert "published tiepdan-2.0.0.tar" in out and "sign timestamp" in out
    out = ota("keys", "rotate", "targets", "--root-keys", str(usb1), "--root-keys", str(usb2),
              config=toml)
    assert "root is now version 2" in out
    assert "tiepdan-2.0.0.tar" in ota("targets", config=toml)
    trusted = tmp_path / "trusted.json"
    ota("trusted-root", "--out", str(trusted), config=toml)
    assert json.loads(trusted.read_text())["signed"]["version"] == 1
    ota("sign", "timestamp", config=toml)
    template = tmp_path / "template"
    out = ota(str(base / "tiepdan-1.9.0.tar"), "--root", str(template),
              cli=[sys.executable, "-m", "tiepdan.firmware.update.install"])
    assert "installed 1.9.0" in out

    repo = UpdateRepository(config.data_dir / "ota" / "repository")
    profile = load_profile("sim")
    boxes, tasks = [], []
    async with running_controller(config) as controller:
        for n in range(3):
            device = f"xa-cli-{n}"
            root = tmp_path / f"{device}-root"
            shutil.copytree(template, root, symlinks=True)
            settings = box_settings(tmp_path, broker, device, root, repo)
            settings["device"]["commune"] = "c1" if n < 2 else "c2"
            admit_box(controller, device, Path(settings["state"]["dir"]))
            box = SimBox(msgspec.convert(settings, AgentConfig), profile, QuietPanel,
                         CannedSensors())
            boxes.append(box)
            tasks.append(asyncio.create_task(box.run()))
        try:
            await eventually(lambda: sum(d.online for d in controller.registry.devices()) == 3,
                             30, what="boxes online")
            out = await asyncio.to_thread(
                ota, "campaign", "start", "tiepdan-2.0.0.tar", "--commune", "c1", "--waves",
                "50,100:0:1", "--jitter", "0", "--approved-by", "bob", "--actor", "alice",
                "--watch", config=toml)
            assert "started: tiepdan-2.0.0.tar to 2 boxes" in out
            assert "completed" in out and "succeeded" in out
            assert [b.version for b in boxes] == ["2.0.0", "2.0.0", "1.9.0"]
            assert all(boot.read_state(b.root)["trial"] is None for b in boxes)
            audit = await asyncio.to_thread(ota, "campaign", "audit", config=toml)
            for words in ("bob", "approved", "alice", "started", "completed"):
                assert words in audit
            history = await asyncio.to_thread(ota, "history", "xa-cli-0", config=toml)
            assert "succeeded" in history and "notified" in history
        finally:
            await stop_all(boxes, tasks)
