"""The installed layout: what the units run exists in a slot made from the real artifact, and
the artifact carries only what a box runs, with every dependency pinned."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT
from tiepdan.firmware.update import slots
from tiepdan.ota.bundle import build_bundle, read_bundle

UNITS = sorted((ROOT / "firmware/systemd").glob("*.service"))
SYSTEM_PYTHON = "/usr/bin/python3"


def exec_start(unit: Path) -> list[str]:
    lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
             if line.startswith("ExecStart=")]
    assert len(lines) == 1, unit
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def installed(box_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/tiepdan as the Debian package leaves it: slot a of the artifact, system Python."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no /usr/bin/python3 (the box's interpreter) on this machine")
    root = tmp_path_factory.mktemp("opt") / "tiepdan"
    slots.install_image(root, box_artifact, python=SYSTEM_PYTHON)
    return root


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_every_unit_command_exists_in_the_installed_layout(unit: Path, installed: Path,
                                                           tmp_path: Path) -> None:
    """The bug of issue 12: the first-boot unit ran a venv path no slot has."""
    command = exec_start(unit)
    assert command[0].startswith("/opt/tiepdan/current/"), command
    program = installed / command[0].removeprefix("/opt/tiepdan/")
    assert program.is_file(), f"{unit.name} runs {command[0]}, which the slot does not hold"
    assert program.stat().st_mode & 0o111
    # It runs from the slot alone: the system interpreter, no venv, no project checkout.
    result = subprocess.run([str(program), "--help"], capture_output=True, text=True,
                            timeout=120, check=False, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / unit.name
    local.write_text(unit.read_text().replace("/opt/tiepdan/", f"{installed}/"))
    verify = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            check=False)
    problems = [line for line in verify.stderr.splitlines()
                if unit.name in line and str(local) not in line]
    assert not problems, verify.stderr


def test_the_slot_runs_on_its_own_dependencies(installed: Path) -> None:
    """The system interpreter has none of them: every import comes from the slot."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "import aiortc, av, cryptography, numpy, tuf, tiepdan.firmware.agent.agent as a; "
             "print(av.__file__); print(a.__file__)")
    site = installed / "current" / "site"
    result = subprocess.run([SYSTEM_PYTHON, "-I", "-c", probe, str(site)], capture_output=True,
                            text=True, timeout=120, check=True)
    for line in result.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), line


def test_the_artifact_is_box_only_and_pinned(box_artifact: Path) -> None:
    manifest, wheel = read_bundle(box_artifact)
    names = zipfile.ZipFile(io.BytesIO(wheel)).namelist()
    packages = {n.split("/")[1] for n in names if n.startswith("tiepdan/") and n.count("/") > 1}
    assert packages == {"board", "firmware", "ota"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(io.BytesIO(wheel)).read(entry_points).decode()
    assert "tiepdan-agent" in scripts and "tiepdan-controller" not in scripts
    pinned = {d.name.lower().replace("_", "-") for d in manifest.dependencies}
    assert {"aiortc", "av", "cryptography", "numpy", "tuf", "paho-mqtt"} <= pinned
    assert "tiepdan" not in pinned
    assert manifest.target == "linux_x86_64"
    lock = box_artifact.with_name("requirements-1.0.0.lock").read_text()
    for dependency in manifest.dependencies:
        assert f"{dependency.name}=={dependency.version} --hash=sha256:{dependency.sha256}" \
            in lock


def test_an_update_without_its_dependencies_is_refused_on_a_box_that_has_them(
        installed: Path, box_artifact: Path, tmp_path: Path) -> None:
    """An app-only bundle (`tiepdan-ota build`) would run on the system interpreter's packages,
    which a packaged box does not have: refused before anything is written."""
    manifest, wheel = read_bundle(box_artifact)
    app = tmp_path / manifest.wheel.replace("1.0.0", "1.0.1")
    app.write_bytes(wheel)
    bundle = build_bundle(app, tmp_path / "dist")
    with pytest.raises(slots.InstallError, match="carries no dependency wheels"):
        slots.install(installed, bundle)
    assert sorted(p.name for p in (installed / "slots").iterdir()) == ["a"]
