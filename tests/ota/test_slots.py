"""A/B slots on disk: kill -9 at every step of an install and of a switch, disk full."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tiepdan.firmware.update import boot, slots

INSTALL_STEPS = ["prepared", "unpacked", "synced", "moved_old", "renamed"]


def killed_at(step: str, code: str) -> None:
    """Run `code` in a child process that kill -9s itself when it reaches checkpoint `step`."""
    program = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tiepdan.firmware.update import boot, slots\n"
        f"def at(step):\n    if step == {step!r}: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"{code}\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120, check=False, cwd=ROOT)
    assert result.returncode == -signal.SIGKILL, result.stderr


def runs(root: Path) -> str:
    """What `current/bin/tiepdan-agent --version` says: the box still boots."""
    result = subprocess.run([str(root / "current" / boot.LAUNCHER), "--version"],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize("step", INSTALL_STEPS)
def test_kill_during_install_leaves_the_box_on_its_version(step: str, tmp_path: Path,
                                                           bundles: dict[str, Path]) -> None:
    root = tmp_path / "root"
    slots.install_image(root, bundles["base"])
    slots.install(root, bundles["old"])  # so that slot b exists and gets replaced
    killed_at(step, f"slots.install(Path({str(root)!r}), Path({str(bundles['good'])!r}), "
                    "checkpoint=at)")
    assert boot.current_slot(root) == "a"
    assert runs(root) == "tiepdan 1.0.0"
    slots.recover(root)
    assert sorted(p.name for p in (root / "slots").iterdir()) in (["a"], ["a", "b"])
    installed = slots.install(root, bundles["good"])  # and the next try works
    assert (installed.name, installed.version) == ("b", "1.1.0")


def test_kill_during_switch_is_cleared_at_next_start(tmp_path: Path,
                                                     bundles: dict[str, Path]) -> None:
    root = tmp_path / "root"
    slots.install_image(root, bundles["base"])
    slots.install(root, bundles["good"])
    killed_at("recorded", f"boot.switch(Path({str(root)!r}), 'b', version='1.1.0', job='j1', "
                          "attempts=2, health_timeout=30, checkpoint=at)")
    assert boot.current_slot(root) == "a"
    assert boot.read_state(root)["trial"]["slot"] == "b"
    assert runs(root) == "tiepdan 1.0.0"
    state = boot.read_state(root)
    assert state["trial"] is None
    assert state["outcome"]["result"] == "interrupted"


def test_launcher_rolls_back_when_attempts_are_used_up(tmp_path: Path,
                                                       bundles: dict[str, Path]) -> None:
    root = tmp_path / "root"
    slots.install_image(root, bundles["base"])
    slots.install(root, bundles["good"])
    boot.switch(root, "b", version="1.1.0", job="j1", attempts=2, health_timeout=30)
    # Two starts that end without a verdict (as a crash would)...
    assert runs(root) == "tiepdan 1.1.0"
    assert runs(root) == "tiepdan 1.1.0"
    assert boot.read_state(root)["trial"]["attempts_left"] == 0
    # ... and the third start goes back to the committed slot before importing slot b.
    assert runs(root) == "tiepdan 1.0.0"
    state = boot.read_state(root)
    assert boot.current_slot(root) == "a" and state["trial"] is None
    assert state["outcome"]["result"] == "rolled_back"
    assert "after 2 start(s)" in state["outcome"]["reason"]


def test_disk_full_during_install(tmp_path: Path, bundles: dict[str, Path]) -> None:
    # Room for one installed image and half of another, whatever the firmware's size today.
    probe = tmp_path / "probe"
    slots.install_image(probe, bundles["base"])
    one = sum(-(-p.stat().st_size // 4096) * 4096 for p in probe.rglob("*") if p.is_file())
    root = tmp_path / "root"
    root.mkdir()
    size = f"size={one * 5 // 4 // 1024}k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(root)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        slots.install_image(root, bundles["base"])
        with pytest.raises(slots.InstallError, match="No space left on device"):
            slots.install(root, bundles["good"])
        assert sorted(p.name for p in (root / "slots").iterdir()) == ["a"]
        assert boot.current_slot(root) == "a" and runs(root) == "tiepdan 1.0.0"
        assert json.loads((root / "boot.json").read_text())["committed"] == "a"
    finally:
        subprocess.run(["umount", str(root)], check=False)
    assert not os.path.ismount(root)
