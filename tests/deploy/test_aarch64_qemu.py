"""The Raspberry Pi artifact on arm64 (issue 12), under qemu-user-static: its compiled wheels
(av, numpy, cryptography, pyrage, msgspec, pillow...) load in Debian bookworm's arm64 Python
3.11 from a slot, and the slot's launcher runs the agent's configuration check.

Building that artifact downloads from PyPI, which a test never does: build it first with
`python -m tiepdan.tools.packaging.artifact --target linux_aarch64 --version 1.0.0` and point
TIEPDAN_AARCH64_ARTIFACT at the .tar (CI does this in its build step)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.debian_root import ARM64_INCLUDE, root_tarball, unpack
from tiepdan.firmware.update import slots
from tiepdan.ota.bundle import read_bundle

pytestmark = pytest.mark.timeout(900)

PROBE = ("import sys, platform; sys.path.insert(0, sys.argv[1]); "
         "import av, numpy, cryptography.hazmat.bindings._rust, pyrage, msgspec, PIL.Image, "
         "aiortc, tiepdan.firmware.agent.agent; "
         "print(platform.machine(), sys.version.split()[0], av.__file__)")


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    given = os.environ.get("TIEPDAN_AARCH64_ARTIFACT")
    if not given:
        pytest.skip("TIEPDAN_AARCH64_ARTIFACT is not set (the aarch64 artifact needs PyPI)")
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-user-static is not installed")
    bundle = Path(given)
    assert read_bundle(bundle)[0].target == "linux_aarch64"
    root = unpack(root_tarball(ARM64_INCLUDE, arch="arm64"), tmp_path_factory.mktemp("arm64")
                  / "root")
    opt = root / "opt/tiepdan"
    slots.install_image(opt, bundle, python="/usr/bin/python3.11")
    return root, opt, qemu


def test_the_aarch64_wheels_load_in_bookworm_arm64_python(arm64: tuple[Path, Path, str]
                                                          ) -> None:
    root, opt, qemu = arm64
    result = subprocess.run([qemu, "-L", str(root), str(root / "usr/bin/python3.11"), "-I",
                             "-c", PROBE, str(opt / "current/site")], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    machine, version, av_file = result.stdout.split()
    assert machine == "aarch64" and version.startswith("3.11.")
    assert Path(av_file).is_relative_to(opt)


def test_the_slot_launcher_checks_a_configuration_on_arm64(arm64: tuple[Path, Path, str],
                                                          tmp_path: Path) -> None:
    root, opt, qemu = arm64
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "xa-arm"\nname = "UBND xã"\n')
    result = subprocess.run([qemu, "-L", str(root), str(root / "usr/bin/python3.11"),
                             str(opt / "current/bin/tiepdan-agent"), "--check-config",
                             "--config", str(config)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config_ok" in result.stderr + result.stdout
