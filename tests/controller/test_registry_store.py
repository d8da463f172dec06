"""The fleet registry's table on SQLite and on PostgreSQL: a box's birth, health and desired
state survive a restart, an event redelivered by QoS 1 is stored once, and pruning keeps the
newest events."""

from __future__ import annotations

from pathlib import Path

from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol


def birth(seq: int) -> protocol.Birth:
    return protocol.Birth(seq=seq, ts=0, firmware="1.2", board="sim", boot_id="b", keepalive=10,
                          point=protocol.Point(kind="commune", name="UBND xã Hưng Nguyên",
                                               province="nghe-an"))


def health(cpu: float) -> protocol.Health:
    return protocol.Health(ts=0, uptime_s=1, cpu_percent=cpu, mem_percent=5,
                           disk_free_bytes=2**40, disk_total_bytes=2**41, load1=0.1)


def press(n: int) -> protocol.Event:
    return protocol.Event(id=f"e-{n:04d}", ts=1_700_000_000_000 + n,
                          data=protocol.ButtonEvent(button="call"))


def test_a_box_survives_a_restart_and_events_are_stored_once(database: Path | str) -> None:
    db = Database(database)
    registry = Registry(db)
    registry.on_birth("xa-a", birth(seq=7))
    registry.set_desired("xa-a", protocol.RemoteConfig(log_level="debug"))  # written at once
    registry.on_health("xa-a", health(cpu=42.5))  # batched until the flush
    assert registry.flush() == 1
    assert registry.on_event("xa-a", press(1)) is True
    assert registry.on_event("xa-a", press(1)) is False  # the QoS 1 redelivery
    for n in range(2, 12):
        registry.on_event("xa-a", press(n))
    db.close()

    db = Database(database)
    again = Registry(db)
    box = again.get("xa-a")
    assert box is not None
    assert (box.seq, box.firmware, box.name, box.province) == (7, "1.2", "UBND xã Hưng Nguyên",
                                                              "nghe-an")
    assert box.health is not None and box.health["cpu_percent"] == 42.5
    assert box.health["disk_free_bytes"] == 2**40  # beyond 32 bits
    assert box.desired is not None and box.desired_version == 1
    events = again.events("xa-a", limit=100)
    assert [e["event_id"] for e in events] == [f"e-{n:04d}" for n in range(11, 0, -1)]
    assert events[0]["ts"] == 1_700_000_000_011 and events[0]["data"]["button"] == "call"
    again.prune_events(keep=3)
    assert [e["event_id"] for e in again.events("xa-a")] == ["e-0011", "e-0010", "e-0009"]
    db.close()
