"""Packaging and shipping: console scripts, namespace, example configs, the systemd unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tiepdan.controller.config import load_config as load_controller_config
from tiepdan.firmware.core.config import load_config as load_agent_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_no_top_level_board_module_is_installed(tmp_path: Path) -> None:
    """Adafruit-Blinka owns `import board` on a Pi; ours is tiepdan.board."""
    probe = ("import importlib.util as u; "
             "print(u.find_spec('board') is None, u.find_spec('tiepdan.board') is not None)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["True", "True"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_and_modules_answer_help(script: str) -> None:
    module = SCRIPTS[script].split(":")[0]
    exe = Path(sys.executable).parent / script
    for argv in ([str(exe), "--help"], [sys.executable, "-m", module.removesuffix(".__main__"),
                                        "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_example_configs_are_valid() -> None:
    assert load_agent_config(ROOT / "firmware/examples/agent.toml").device.id == "xa-hung-nguyen"
    assert load_controller_config(ROOT / "controller/examples/controller.toml").http.port == 8600


def test_agent_exits_with_a_clear_message_on_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[device]\nid = "xa-a"\nname = "n"\n[mqtt]\nport = 70000\n')
    result = subprocess.run([sys.executable, "-m", "tiepdan.firmware", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"{bad}: mqtt.port: expected `int` <= 65535" in result.stderr


def test_systemd_unit_is_valid_and_uses_notify_with_a_watchdog(tmp_path: Path) -> None:
    unit = (ROOT / "firmware/systemd/tiepdan-agent.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "After=network-online.target time-sync.target",
                 "StandardOutput=journal"):
        assert line in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / "tiepdan-agent.service"
    agent = Path(sys.executable).parent / "tiepdan-agent"
    local.write_text(unit.replace("/opt/tiepdan/current/bin/tiepdan-agent", str(agent)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            check=False)
    problems = [line for line in result.stderr.splitlines()
                if "tiepdan-agent.service" in line and str(local) not in line]
    assert not problems, result.stderr


def test_agent_not_yet_enrolled_says_so_instead_of_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "xa-a"\nname = "n"\n[board]\nprofile = "sim"\n'
                      f'[state]\ndir = "{tmp_path}"\n')
    result = subprocess.run([sys.executable, "-m", "tiepdan.firmware", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3
    assert f"TLS file {tmp_path}/tls/ca.pem does not exist" in result.stderr
    assert "tiepdan-enroll" in result.stderr and "Traceback" not in result.stderr
