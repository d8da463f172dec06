"""No decryption identity on the controller unless a trial asks for one (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
import tomli_w

from tests.support import make_controller_config, running_controller
from tiepdan.controller.service import Controller
from tiepdan.firmware.core.config import ConfigError
from tiepdan.tools.broker import Mosquitto


def test_without_recipients_the_controller_refuses_to_start(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started: the refusal comes first
    config = make_controller_config(tmp_path, broker, archive={"trial_identity": False})
    with pytest.raises(ConfigError, match=r"no \[archive\] recipients"):
        Controller(config)
    assert not list((tmp_path / "controller").rglob("identity.txt"))

    path = tmp_path / "controller.toml"
    path.write_text(tomli_w.dumps({"controller": {"data_dir": str(tmp_path / "cli")},
                                   "mqtt": {"tls": False}}))
    run = subprocess.run([sys.executable, "-m", "tiepdan.controller", "--config", str(path),
                          "run"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert "config_invalid no [archive] recipients" in run.stdout + run.stderr
    assert not list((tmp_path / "cli").rglob("identity.txt"))


async def test_with_recipients_the_controller_holds_no_identity(tmp_path: Path,
                                                               broker: Mosquitto) -> None:
    archivist = pyrage.x25519.Identity.generate()
    config = make_controller_config(
        tmp_path, broker, archive={"trial_identity": False,
                                   "recipients": [str(archivist.to_public())]})
    async with running_controller(config) as controller:
        assert controller.archive.recipients == [str(archivist.to_public())]
        assert not controller.archive.identity_file.exists()
        assert not [p for p in (tmp_path / "controller").rglob("*")
                    if p.is_file() and b"AGE-SECRET-KEY-" in p.read_bytes()]
