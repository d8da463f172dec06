"""The central server installed the way README's "Deploying the central server" says, into a
clean Debian bookworm root with Mosquitto (issue 12): user, folders and their owners, the venv
with every pinned dependency, the CA and the broker's files, the Mosquitto include, the
broker-reload rule and the unit; then Mosquitto and the controller run from what was installed,
with the broker accepting the controller's mutual TLS."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.debian_root import SERVER_INCLUDE, chroot, root_tarball, unpack
from tiepdan.tools.broker import free_port
from tiepdan.tools.packaging import artifact

pytestmark = pytest.mark.timeout(1200)

DATA = "var/lib/tiepdan-controller"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's release folder: artifact, install-controller, unit, polkit rule."""
    out = tmp_path_factory.mktemp("server-dist")
    bundle = artifact.build(artifact.host_target(), "1.0.0", out, offline=True,
                            role="controller")
    return bundle.parent


@pytest.fixture(scope="module")
def installed(server: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = unpack(root_tarball(SERVER_INCLUDE), tmp_path_factory.mktemp("server") / "root")
    shutil.copytree(server, root / "tmp/release")
    chroot(root, "/tmp/release/install-controller", "/tmp/release/tiepdan-1.0.0.tar",
           "--broker-host", "mqtt.tinh.example.gov.vn", timeout=600)
    return root


def owner(root: Path, path: str) -> tuple[str, str, int]:
    info = (root / path).stat()
    passwd = {int(line.split(":")[2]): line.split(":")[0]
              for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {int(line.split(":")[2]): line.split(":")[0]
              for line in (root / "etc/group").read_text().splitlines()}
    return passwd[info.st_uid], groups[info.st_gid], stat.S_IMODE(info.st_mode)


def test_install_controller_sets_up_the_server(installed: Path) -> None:
    assert os.readlink(installed / "opt/tiepdan-controller/current") == "1.0.0"
    versions = chroot(installed, "/opt/tiepdan-controller/current/bin/python", "-c",
                      "import importlib.metadata as m; print(m.version('tiepdan'), "
                      "m.version('aiortc'))").stdout.split()
    assert versions[0] == "1.0.0" and versions[1]
    assert owner(installed, DATA) == ("tiepdan-controller", "tiepdan-controller", 0o751)
    assert owner(installed, f"{DATA}/broker")[:2] == ("tiepdan-controller", "mosquitto")
    assert owner(installed, f"{DATA}/broker/broker.key")[1:] == ("mosquitto", 0o640)
    assert owner(installed, "etc/tiepdan/controller.toml") == ("root", "tiepdan-controller",
                                                               0o640)
    include = installed / "etc/mosquitto/conf.d/tiepdan.conf"
    assert os.readlink(include) == f"/{DATA}/broker/tiepdan.conf"
    assert "require_certificate true" in (installed / DATA / "broker/tiepdan.conf").read_text()
    rule = (installed / "etc/polkit-1/rules.d/50-tiepdan-controller.rules").read_text()
    assert '"mosquitto.service"' in rule and '"reload"' in rule
    assert (installed / "etc/systemd/system/multi-user.target.wants/"
            "tiepdan-controller.service").is_symlink()
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        result = subprocess.run([analyze, "verify", f"--root={installed}",
                                 "tiepdan-controller.service"], capture_output=True, text=True,
                                check=False, timeout=120)
        assert result.returncode == 0, result.stderr


def test_running_it_again_upgrades_nothing_it_should_keep(installed: Path) -> None:
    config = installed / "etc/tiepdan/controller.toml"
    config.write_text(config.read_text() + "\n# the admin's own edit\n")
    ca = (installed / DATA / "provisioning").stat().st_mtime_ns
    chroot(installed, "/tmp/release/install-controller", "/tmp/release/tiepdan-1.0.0.tar",
           "--broker-host", "mqtt.tinh.example.gov.vn", timeout=600)
    assert config.read_text().endswith("# the admin's own edit\n")
    assert (installed / DATA / "provisioning").stat().st_mtime_ns == ca


def test_mosquitto_and_the_controller_run_from_the_installed_files(installed: Path,
                                                                  tmp_path: Path) -> None:
    """The unit's own command, as its user, against Mosquitto started with the include."""
    # Ports of this test run, the broker on loopback only (a shared machine); the rest as
    # installed. /run/mosquitto is what systemd's RuntimeDirectory would make.
    http, mqtt = free_port(), free_port()
    conf = installed / DATA / "broker/tiepdan.conf"
    conf.write_text(conf.read_text().replace("listener 8883", f"listener {mqtt} 127.0.0.1"))
    run = installed / "run/mosquitto"
    run.mkdir(parents=True, exist_ok=True)
    chroot(installed, "chown", "mosquitto:mosquitto", "/run/mosquitto")
    config = installed / "etc/tiepdan/controller.toml"
    text = config.read_text().replace("port = 8600", f"port = {http}")
    text = text.replace("port = 8883", f"port = {mqtt}")
    config.write_text(text.replace("enroll_port = 8443", f"enroll_port = {free_port()}")
                      .replace('broker_reload = ["systemctl", "reload", "mosquitto"]',
                               "broker_reload = []"))  # no systemd in a chroot
    assert "broker_reload = []" in config.read_text() and f"port = {mqtt}" in config.read_text()
    mosquitto = subprocess.Popen(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(installed), "/usr/sbin/mosquitto",
         "-c", "/etc/mosquitto/mosquitto.conf"],
        stdout=(tmp_path / "mosquitto.log").open("wb"), stderr=subprocess.STDOUT)
    unit = (installed / "etc/systemd/system/tiepdan-controller.service").read_text()
    command = next(line.split("=", 1)[1] for line in unit.splitlines()
                   if line.startswith("ExecStart=")).split()
    controller = subprocess.Popen(
        [shutil.which("chroot") or "/usr/sbin/chroot", "--userspec=tiepdan-controller:"
         "tiepdan-controller", str(installed), *command],
        stdout=(tmp_path / "controller.log").open("wb"), stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    try:
        health: dict[str, object] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not health.get("mqtt"):
            time.sleep(0.5)
            assert controller.poll() is None, (tmp_path / "controller.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/health",
                                            timeout=2) as reply:
                    health = json.loads(reply.read())
            except OSError:
                continue
        assert health.get("mqtt"), (tmp_path / "controller.log").read_text()[-3000:] + \
            (tmp_path / "mosquitto.log").read_text()[-2000:]
    finally:
        for process in (controller, mosquitto):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
