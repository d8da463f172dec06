"""The box package CI builds, installed into a clean Debian bookworm root (issue 12): its files,
user and units, the installed agent's configuration check, and purge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.debian_root import chroot, root_tarball, unpack
from tiepdan.tools.packaging import deb

pytestmark = pytest.mark.timeout(1200)

UNITS = ("tiepdan-agent.service", "tiepdan-firstboot.service")


@pytest.fixture(scope="module")
def package(box_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deb.build(box_artifact, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def installed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = unpack(root_tarball(), tmp_path_factory.mktemp("bookworm") / "root")
    shutil.copy(package, root / "tmp" / package.name)
    chroot(root, "dpkg", "-i", f"/tmp/{package.name}")
    return root


def test_the_package_installs_slot_a_the_user_and_the_units(installed: Path) -> None:
    opt = installed / "opt/tiepdan"
    assert os.readlink(opt / "current") == "slots/a"
    assert json.loads((opt / "boot.json").read_text())["committed"] == "a"
    for program in ("bin/tiepdan-agent", "bin/tiepdan-enroll"):
        assert os.access(opt / "slots/a" / program, os.X_OK), program
    assert chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--version"
                  ).stdout.strip() == "tiepdan 1.0.0"
    user = chroot(installed, "getent", "passwd", "tiepdan").stdout.split(":")
    assert user[5] == "/var/lib/tiepdan" and user[6].strip() in ("/usr/sbin/nologin",
                                                                  "/bin/false")
    groups = chroot(installed, "id", "-nG", "tiepdan").stdout.split()
    assert {"tiepdan", "video", "audio"} <= set(groups)  # gpio and render only exist on a Pi
    uid = int(user[2])
    state = (installed / "var/lib/tiepdan").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o700)
    assert (opt / "slots/a/site").stat().st_uid == uid  # the agent installs updates itself
    assert (installed / "etc/tiepdan").is_dir()
    wants = installed / "etc/systemd/system/multi-user.target.wants"
    for unit in UNITS:
        assert (wants / unit).is_symlink(), f"{unit} is not enabled"
    journald = (installed / "usr/lib/systemd/journald.conf.d/tiepdan.conf").read_text()
    assert "SystemMaxUse=" in journald and "Storage=persistent" in journald


def test_systemd_verifies_the_installed_units(installed: Path) -> None:
    """Against the installed files: a unit whose command is missing fails here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run([analyze, "verify", f"--root={installed}", *UNITS],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    broken = installed / "etc/systemd/system/tiepdan-broken.service"
    broken.write_text((installed / "usr/lib/systemd/system/tiepdan-firstboot.service")
                      .read_text().replace("current/bin/", "current/venv/bin/"))
    try:
        result = subprocess.run([analyze, "verify", f"--root={installed}", broken.name],
                                capture_output=True, text=True, check=False, timeout=120)
        assert "current/venv/bin/tiepdan-enroll is not executable" in result.stderr
    finally:
        broken.unlink()


def test_the_installed_agent_checks_its_configuration(installed: Path) -> None:
    config = installed / "etc/tiepdan/check.toml"
    config.write_text('[device]\nid = "xa-check"\nname = "UBND xã"\n')
    try:
        ok = chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--check-config",
                    "--config", "/etc/tiepdan/check.toml", user="tiepdan")
        assert "config_ok" in ok.stderr + ok.stdout
        config.write_text('[device]\nid = "xa-check"\nname = "n"\n[mqtt]\nport = 70000\n')
        bad = chroot(installed, "/opt/tiepdan/current/bin/tiepdan-agent", "--check-config",
                     "--config", "/etc/tiepdan/check.toml", user="tiepdan", check=False)
        assert bad.returncode == 2 and "mqtt.port" in bad.stderr
    finally:
        config.unlink()
