"""The campaign engine's rules on their own: selection, waves, the notification rate cap."""

from __future__ import annotations

import time

import pytest

from tiepdan.controller.fleet.registry import Device
from tiepdan.controller.updates.campaign import Selector, Wave, _Bucket, assign_waves, select
from tiepdan.firmware.update import window


def fleet() -> list[Device]:
    return [
        Device(id="a", province="na", commune="c1", firmware="1.0.0",
               reported={"config": {"tags": ["pilot"]}}),
        Device(id="b", province="na", commune="c2", firmware="1.1.0",
               desired={"config": {"tags": ["pilot", "north"]}}),
        Device(id="c", province="ht", commune="c3", firmware="1.0.0"),
    ]


@pytest.mark.parametrize(("selector", "expected"), [
    (Selector(), ["a", "b", "c"]),
    (Selector(province="na"), ["a", "b"]),
    (Selector(communes=["c1", "c3"]), ["a", "c"]),
    (Selector(tag="pilot"), ["a", "b"]),
    (Selector(version="1.0.0"), ["a", "c"]),
    (Selector(province="na", version="1.0.0"), ["a"]),
    (Selector(devices=["c"]), ["c"]),
])
def test_selection(selector: Selector, expected: list[str]) -> None:
    assert select(fleet(), selector) == expected


def test_waves_are_cumulative_and_start_small() -> None:
    waves = [Wave(1), Wave(10), Wave(50), Wave(100)]
    assigned = assign_waves([f"d{n}" for n in range(1000)], waves)
    assert [assigned.count(k) for k in range(4)] == [10, 90, 400, 500]
    small = assign_waves(["x", "y", "z"], waves)
    assert small == [0, 1, 2]  # fewer boxes than waves: one box per wave, the last is empty


def test_notification_rate_cap() -> None:
    bucket = _Bucket(rate=5.0, at=time.monotonic())
    granted = bucket.take(100, 5.0)
    assert granted <= 5  # never a burst beyond one second's worth
    time.sleep(0.5)
    assert 1 <= bucket.take(100, 5.0) <= 3


@pytest.mark.parametrize(("spec", "hour", "inside"), [
    (None, 12, True), ("01:00-04:00", 2, True), ("01:00-04:00", 5, False),
    ("22:00-04:00", 23, True), ("22:00-04:00", 3, True), ("22:00-04:00", 12, False),
])
def test_maintenance_window(spec: str | None, hour: int, inside: bool) -> None:
    from datetime import datetime

    assert window.inside(spec, datetime(2026, 1, 1, hour, 30)) is inside
