"""The README's first command: the demo brings every simulated box online and stops cleanly."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiepdan.tools import netns


@pytest.mark.parametrize("bridge", [
    "aiortc",
    pytest.param("janus", marks=pytest.mark.skipif(
        shutil.which("janus") is None or not netns.available(),
        reason="needs Debian's janus and root (a network namespace)"))])
def test_demo_runs_for_a_duration_with_every_box_online(tmp_path: Path, bridge: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tiepdan.tools.demo", "--duration", "20",
         "--workdir", str(tmp_path), "--bridge", bridge],
        capture_output=True, text=True, timeout=120, check=False,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fleet: 5/5 online" in result.stdout
    assert f"bridge {bridge}" in result.stdout
    login = re.search(r"web console: (http://127\.0\.0\.1:\d+/)\s+sign in as demo / (\S+)",
                      result.stdout)
    assert login, result.stdout[:3000]
    from tiepdan.controller.people.users import Users
    from tiepdan.controller.store import Database

    db = Database(tmp_path / "controller" / "controller.db")
    user = Users(db).verify("demo", login[2])  # the printed login is the real one
    db.close()
    assert user is not None and user.role == "admin"
    assert "all 5 boxes were online" in result.stdout
    assert re.search(r"session s-[0-9a-f]+ went live with 5 points", result.stdout), \
        result.stdout[-3000:]
    # Five points and the bridge recorded; all of it reached the archive before it closed.
    closed = re.search(r"session (s-[0-9a-f]+) closed: 6 recordings, (\d+) segments",
                       result.stdout)
    assert closed, result.stdout[-3000:]
    verify = subprocess.run(
        [sys.executable, "-m", "tiepdan.controller.cli.archive", "--config",
         str(tmp_path / "controller.toml"), "verify", closed[1], "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    for name in ("tw-ban-tcd", "nghe-an-ban-tcd", "xa-hung-nguyen", "xa-dien-chau",
                 "xa-quynh-luu"):
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert "agent_stop" in log, f"{name} did not stop cleanly"
    controller_log = (tmp_path / "logs" / "controller.log").read_text()
    # The session's media went through the engine asked for (Janus: the one the demo started).
    assert ("janus_compositor_start" in controller_log) == (bridge == "janus")
    if bridge == "janus":
        assert len(re.findall(r"janus_bridge bridge_join session=", controller_log)) >= 5


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "tiepdan.tools.demo", "--workdir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    logs = tmp_path / "logs"
    while time.monotonic() < deadline:
        if all((logs / f"{n}.log").exists() and "mqtt_connected" in (logs / f"{n}.log").read_text()
               for n in ("tw-ban-tcd", "nghe-an-ban-tcd", "xa-hung-nguyen", "xa-dien-chau",
                         "xa-quynh-luu")):
            break
        time.sleep(0.2)
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, out[-2000:] + err[-2000:]
    broker_log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert "mosquitto version" in broker_log and "terminating" in broker_log
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True,
                               check=False).stdout.split()
    assert leftovers == [], "the demo left processes behind"
