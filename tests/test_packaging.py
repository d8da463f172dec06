"""Packaging and shipping: console scripts, namespace, example configs, the systemd unit."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tiepdan.controller.config import load_config as load_controller_config
from tiepdan.firmware.agent.config import load_config as load_agent_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {ep.name: ep.value for ep in importlib.metadata.distribution("tiepdan").entry_points
           if ep.group == "console_scripts"}
BOX_UNITS = {"board", "firmware", "ota"}


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


def test_every_program_is_installed() -> None:
    assert {"tiepdan-agent", "tiepdan-enroll", "tiepdan-install", "tiepdan-updater",
            "tiepdan-controller", "tiepdan-provision", "tiepdan-ota", "tiepdan-archive",
            "tiepdan-demo"} <= set(SCRIPTS)


def _wheel(tmp_path: Path, target: str) -> zipfile.ZipFile:
    """Build the wheel for `target` from a copy of the tree, offline (no build isolation)."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "build", "__pycache__", ".*_cache", "tests", "docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(source)], env={**os.environ, "TIEPDAN_TARGET": target}, check=True,
                   capture_output=True, timeout=300)
    return zipfile.ZipFile(next((tmp_path / "dist").glob("tiepdan-*.whl")))


def test_the_box_wheel_carries_only_what_a_box_runs(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "box")
    units = {name.split("/")[1] for name in wheel.namelist()
             if name.startswith("tiepdan/") and name.count("/") > 1}
    assert units == BOX_UNITS
    entry_points = wheel.read(next(n for n in wheel.namelist()
                                   if n.endswith("entry_points.txt"))).decode()
    programs = {line.split("=")[0].strip() for line in entry_points.splitlines()
                if "=" in line}
    assert programs == {"tiepdan-agent", "tiepdan-enroll", "tiepdan-install",
                        "tiepdan-updater"}
    # what the box runs imports nothing the wheel leaves out (the layering test's rule, kept)
    assert "tiepdan/firmware/agent/agent.py" in wheel.namelist()
    assert not any(n.startswith(("tiepdan/controller/", "tiepdan/tools/"))
                   for n in wheel.namelist())


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


def unit_settings(name: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit, values split on spaces, keys repeated as systemd merges."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "firmware/systemd" / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).extend(value.split())
    return found


def test_only_the_updater_unit_may_write_the_slots(tmp_path: Path) -> None:
    """The agent runs with /opt/tiepdan read-only and asks the updater, which is confined to
    the slots, its state and runtime folders, and the few capabilities its job needs."""
    agent, updater = unit_settings("tiepdan-agent.service"), unit_settings(
        "tiepdan-updater.service")
    assert "/opt/tiepdan" in agent["ReadOnlyPaths"]
    assert not any(p.startswith("/opt") for p in agent["ReadWritePaths"])
    assert agent["User"] == ["tiepdan"] and agent["ProtectSystem"] == ["strict"]
    assert "tiepdan-updater.service" in agent["Wants"]
    assert "tiepdan-updater.service" in agent["After"]
    assert updater["ExecStart"][0] == "/opt/tiepdan/current/bin/tiepdan-updater"
    assert "User" not in updater  # root: see the unit's comment for why
    assert updater["ReadWritePaths"] == ["/opt/tiepdan"]
    assert updater["ProtectSystem"] == ["strict"] and updater["NoNewPrivileges"] == ["yes"]
    assert set(updater["CapabilityBoundingSet"]) == {"CAP_DAC_READ_SEARCH", "CAP_KILL",
                                                     "CAP_CHOWN", "CAP_FOWNER"}
    assert updater["RuntimeDirectory"] == ["tiepdan-updater"]  # the socket's folder
    assert updater["StateDirectory"] == ["tiepdan-updater"]
    assert updater["Type"] == ["notify"] and "tiepdan-agent.service" in updater["Before"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / "tiepdan-updater.service"
    program = Path(sys.executable).parent / "tiepdan-updater"
    local.write_text((ROOT / "firmware/systemd/tiepdan-updater.service").read_text().replace(
        "/opt/tiepdan/current/bin/tiepdan-updater", str(program)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            check=False)
    problems = [line for line in result.stderr.splitlines()
                if "tiepdan-updater.service" in line and str(local) not in line]
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
