"""The image recipe (pi-gen stage in tools/image): it parses, keeps SSH off, turns the hardware
watchdog on, and its install step installs the very package CI builds. Building the image needs
the Raspberry Pi archive, which CI cannot reach: the stage's scripts run here against the clean
Debian root instead, with pi-gen's `on_chroot` as a plain chroot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.debian_root import CHROOT, chroot, root_tarball, unpack
from tests.support import ROOT
from tiepdan.tools.packaging import deb

IMAGE = ROOT / "tools/image"
STAGE = IMAGE / "stage-tiepdan"
SCRIPTS = sorted([IMAGE / "build.sh", *STAGE.rglob("*.sh")])

pytestmark = pytest.mark.timeout(900)


def sourced(config: Path) -> dict[str, str]:
    """The variables pi-gen gets when it sources `config` (bash, empty environment)."""
    result = subprocess.run(["env", "-i", "bash", "-c", f"set -a; . {config}; env -0"],
                            capture_output=True, check=True, timeout=30)
    return dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if item)


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(IMAGE)) for s in SCRIPTS])
def test_every_script_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        result = subprocess.run([shellcheck, "-S", "warning", str(script)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout


def test_config_builds_lite_bookworm_with_ssh_off_and_the_tiepdan_stage() -> None:
    config = sourced(IMAGE / "config")
    assert config["RELEASE"] == "bookworm"
    assert config["ENABLE_SSH"] == "0"
    assert config["STAGE_LIST"].split() == ["stage0", "stage1", "stage2", "stage-tiepdan"]
    assert config["DISABLE_FIRST_BOOT_USER_RENAME"] == "1"
    assert "FIRST_USER_PASS" not in config  # never in the repository: build.sh asks for it
    assert (STAGE / "EXPORT_IMAGE").is_file() and (STAGE / "prerun.sh").is_file()
    packages = (STAGE / "00-tiepdan/00-packages").read_text().split()
    assert set(packages) <= {"python3-picamera2", "python3-lgpio", "python3-pyaudio",
                             "unattended-upgrades"}


def test_build_script_puts_the_package_deb_py_builds_into_the_stage() -> None:
    build = (IMAGE / "build.sh").read_text()
    assert "tiepdan.tools.packaging.artifact --target linux_aarch64" in build
    assert "tiepdan.tools.packaging.deb" in build
    assert "stage-tiepdan/00-tiepdan/files/" in build
    assert f"files/{deb.PACKAGE}_*.deb" in (STAGE / "00-tiepdan/00-run.sh").read_text()


def test_the_stage_installs_the_ci_package_and_hardens_the_root(
        box_artifact: Path, tmp_path: Path) -> None:
    """pi-gen runs each substage's 00-run.sh from its folder with ROOTFS_DIR set and
    `on_chroot` feeding stdin to a shell in the root; so does this test."""
    package = deb.build(box_artifact, tmp_path / "deb")
    root = unpack(root_tarball(), tmp_path / "rootfs")
    (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
    (root / "boot/firmware/config.txt").write_text("[all]\n")
    stage = tmp_path / "stage-tiepdan"
    shutil.copytree(STAGE, stage)
    shutil.copy(package, stage / "00-tiepdan/files" / package.name)
    on_chroot = f'on_chroot() {{ {CHROOT} "$ROOTFS_DIR" /bin/bash -e; }}; export -f on_chroot'
    for substage in ("00-tiepdan", "01-hardening"):
        result = subprocess.run(
            ["bash", "-c", f"{on_chroot}; ./00-run.sh"], cwd=stage / substage,
            env={"ROOTFS_DIR": str(root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                 "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"},
            capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{substage}:\n{result.stdout[-3000:]}\n" \
                                       f"{result.stderr[-3000:]}"
    status = chroot(root, "dpkg-query", "-W", "-f=${Status} ${Version}", deb.PACKAGE).stdout
    assert status == "install ok installed 1.0.0"
    assert (root / "opt/tiepdan/current/bin/tiepdan-agent").exists()
    assert not (root / "tmp" / package.name).exists()
    assert (root / "etc/systemd/system/ssh.service").resolve() == Path("/dev/null")
    assert "RuntimeWatchdogSec=15s" in (
        root / "etc/systemd/system.conf.d/tiepdan-watchdog.conf").read_text()
    assert "dtparam=watchdog=on" in (root / "boot/firmware/config.txt").read_text()
    upgrades = (root / "etc/apt/apt.conf.d/52tiepdan-unattended-upgrades").read_text()
    assert "label=Debian-Security" in upgrades and 'Automatic-Reboot "true"' in upgrades
    assert "${distro_codename}" in upgrades  # left for unattended-upgrades, not the shell
    assert (root / "etc/systemd/system/multi-user.target.wants/tiepdan-firstboot.service"
            ).is_symlink()
