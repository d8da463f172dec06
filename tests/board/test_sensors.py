from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tiepdan.board.profile import BoardProfile, load_profile
from tiepdan.board.sensors import THERMAL, THROTTLED, TIMESYNC_DIR, Sensors


def fake_root(
    tmp_path: Path,
    *,
    temp: str | None = None,
    throttled: str | None = None,
    timesync: str | None = None,
) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for relative, text in [(THERMAL, temp), (THROTTLED, throttled)]:
        if text is not None:
            path = root / relative
            path.parent.mkdir(parents=True)
            path.write_text(text)
    if timesync is not None:
        folder = root / TIMESYNC_DIR
        folder.mkdir(parents=True)
        if timesync == "synchronized":
            (folder / "synchronized").touch()
    return root


def test_pi_readings_from_sysfs(tmp_path: Path) -> None:
    root = fake_root(tmp_path, temp="48312\n", throttled="50005\n", timesync="synchronized")
    health = Sensors(load_profile("rpi4"), tmp_path, root=root).read()
    assert health.cpu_temp_c == pytest.approx(48.312)
    assert health.throttled == 0x50005
    assert health.under_voltage is True
    assert health.clock_synced is True


def test_healthy_pi(tmp_path: Path) -> None:
    root = fake_root(tmp_path, temp="61000", throttled="0x0", timesync="waiting")
    health = Sensors(load_profile("rpi4"), tmp_path, root=root).read()
    assert health.cpu_temp_c == pytest.approx(61.0)
    assert health.throttled == 0
    assert health.under_voltage is False
    assert health.clock_synced is False  # timesyncd runs but has not synchronised yet


def test_past_under_voltage_is_not_current(tmp_path: Path) -> None:
    root = fake_root(tmp_path, throttled="50000")  # "has occurred" bits only
    health = Sensors(load_profile("rpi4"), tmp_path, root=root).read()
    assert health.throttled == 0x50000
    assert health.under_voltage is False


def test_unknowable_readings_are_none(tmp_path: Path, sim: BoardProfile) -> None:
    health = Sensors(sim, tmp_path, root=fake_root(tmp_path)).read()
    assert health.cpu_temp_c is None
    assert health.throttled is None
    assert health.under_voltage is None
    assert health.clock_synced is None


def test_garbage_in_sysfs_is_none_not_a_crash(tmp_path: Path, sim: BoardProfile) -> None:
    root = fake_root(tmp_path, temp="hot", throttled="zz")
    health = Sensors(sim, tmp_path, root=root).read()
    assert health.cpu_temp_c is None
    assert health.throttled is None


def test_system_readings(tmp_path: Path, sim: BoardProfile) -> None:
    health = Sensors(sim, tmp_path, root=fake_root(tmp_path)).read()
    disk = shutil.disk_usage(tmp_path)
    assert health.disk_total_bytes == disk.total
    assert 0 < health.disk_free_bytes <= disk.total
    assert 0.0 <= health.cpu_percent <= 100.0
    assert 0.0 < health.mem_percent <= 100.0
    assert health.load1 >= 0.0
    assert health.uptime_s > 0.0


def test_health_is_a_frozen_record(tmp_path: Path, sim: BoardProfile) -> None:
    health = Sensors(sim, tmp_path, root=fake_root(tmp_path)).read()
    with pytest.raises(dataclasses.FrozenInstanceError):
        health.load1 = 0.0  # type: ignore[misc]
    assert set(dataclasses.asdict(health)) == {
        "cpu_temp_c",
        "throttled",
        "under_voltage",
        "cpu_percent",
        "mem_percent",
        "disk_free_bytes",
        "disk_total_bytes",
        "load1",
        "uptime_s",
        "clock_synced",
    }
