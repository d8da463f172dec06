"""The device registry: who exists, who is online, how they are, what they were told.

Fed by births, deaths, telemetry, reported state and events. A death counts only when it
carries the session counter of the box's current birth (Sparkplug's bdSeq rule), so a Will
from an older connection never marks a reconnected box offline. Health arrives often and is
written in batches; births, deaths and events are written at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tiepdan.controller.store import Database
from tiepdan.firmware import protocol

log = logging.getLogger(__name__)

# Its tables are created and changed only by controller/migrations/controller_db.py.

ONLINE = {"init", "ready"}


@dataclass
class Device:
    id: str
    kind: str = ""
    name: str = ""
    province: str = ""
    commune: str = ""
    state: str = "unknown"
    seq: int = -1
    firmware: str = ""
    board: str = ""
    boot_id: str = ""
    capabilities: list[str] = field(default_factory=list)
    since: float = 0.0
    last_seen: float = 0.0
    health: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    desired: dict[str, Any] | None = None
    desired_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.state in ONLINE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["online"] = self.online
        return data


_JSON_FIELDS = ("capabilities", "health", "reported", "desired", "extra")
_COLUMNS = tuple(f.name for f in fields(Device))
_UPSERT = (f"INSERT INTO devices ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT(id) DO UPDATE SET "
           + ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "id"))


def _row(d: Device) -> tuple[Any, ...]:
    """The devices row, read straight off the fields (`asdict` deep-copies every health dict,
    most of a 10,000-box flush)."""
    row = []
    for column in _COLUMNS:
        value = getattr(d, column)
        row.append(json.dumps(value) if column in _JSON_FIELDS and value is not None else value)
    return tuple(row)

Listener = Callable[[Device, str], None]


class Registry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._devices: dict[str, Device] = {}
        self._dirty: set[str] = set()
        self._listeners: list[Listener] = []
        for row in db.conn.execute("SELECT * FROM devices"):
            values = dict(row)
            for key in _JSON_FIELDS:
                values[key] = json.loads(values[key]) if values[key] else None
            values["capabilities"] = values["capabilities"] or []
            values["extra"] = values["extra"] or {}
            self._devices[row["id"]] = Device(**values)

    def listen(self, listener: Listener) -> None:
        """`listener(device, what)` after every change; `what` names the change."""
        self._listeners.append(listener)

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    def _device(self, device_id: str) -> Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = Device(id=device_id)
        return device

    # -- inputs ----------------------------------------------------------------------------------

    def on_birth(self, device_id: str, birth: protocol.Birth) -> None:
        d = self._device(device_id)
        d.seq = birth.seq
        d.kind, d.name = birth.point.kind, birth.point.name
        d.province, d.commune = birth.point.province, birth.point.commune
        d.firmware, d.board, d.boot_id = birth.firmware, birth.board, birth.boot_id
        d.capabilities = list(birth.capabilities)
        d.last_seen = time.time()
        if not d.online:
            d.state, d.since = "ready", time.time()
        log.info("device_birth device=%s seq=%d firmware=%s", device_id, birth.seq, birth.firmware)
        self._write(d, "birth")

    def on_state(self, device_id: str, state: protocol.DeviceState) -> None:
        d = self._device(device_id)
        if state.state in ONLINE:
            d.seq = state.seq
        elif state.seq != d.seq and d.seq >= 0:
            log.info("device_stale_death device=%s state=%s seq=%d current_seq=%d",
                     device_id, state.state, state.seq, d.seq)
            return
        if d.state != state.state:
            d.since = time.time()
            log.info("device_state device=%s state=%s seq=%d", device_id, state.state, state.seq)
        d.state = state.state
        d.last_seen = time.time()
        self._write(d, "state")

    def on_health(self, device_id: str, health: protocol.Health) -> None:
        d = self._device(device_id)
        d.health = protocol.to_builtins(health)
        d.last_seen = time.time()
        self._dirty.add(device_id)
        self._notify(d, "health")

    def on_reported(self, device_id: str, reported: protocol.Reported) -> None:
        d = self._device(device_id)
        d.reported = protocol.to_builtins(reported)
        log.info("device_reported device=%s version=%d error=%s",
                 device_id, reported.version, reported.error)
        self._write(d, "reported")

    def on_event(self, device_id: str, event: protocol.Event) -> bool:
        """Store an event once; returns False for a duplicate (QoS 1 redelivery)."""
        d = self._device(device_id)
        d.last_seen = time.time()
        cur = self._db.conn.execute(
            "INSERT INTO events (device, event_id, kind, ts, received, data) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (device_id, event.id, protocol.event_kind(event.data), event.ts, time.time(),
             protocol.encode(event.data).decode()),
        )
        if cur.rowcount == 0:
            log.info("event_duplicate device=%s event=%s", device_id, event.id)
            return False
        self._notify(d, "event")
        return True

    def set_desired(self, device_id: str, config: protocol.RemoteConfig) -> protocol.Desired:
        d = self._device(device_id)
        desired = protocol.Desired(version=d.desired_version + 1, ts=protocol.now_ms(),
                                   config=config)
        d.desired_version = desired.version
        d.desired = protocol.to_builtins(desired)
        self._write(d, "desired")
        return desired

    def set_extra(self, device_id: str, key: str, value: Any) -> None:
        """Per-device facts other parts keep (call state and QoS, update status, ...)."""
        d = self._device(device_id)
        d.extra[key] = value
        self._dirty.add(device_id)
        self._notify(d, key)

    # -- queries ---------------------------------------------------------------------------------

    def events(self, device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = "SELECT device, event_id, kind, ts, received, data FROM events"
        params: tuple[Any, ...] = ()
        if device_id:
            query += " WHERE device = ?"
            params = (device_id,)
        rows = self._db.conn.execute(query + " ORDER BY n DESC LIMIT ?", (*params, limit))
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    # -- persistence -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Write batched changes (health, extra); returns how many devices were written."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        with self._db.transaction() as conn:  # one batch: PostgreSQL pipelines it
            conn.executemany(_UPSERT, [_row(self._devices[device_id]) for device_id in dirty])
        return len(dirty)

    def prune_events(self, keep: int) -> None:
        self._db.conn.execute("DELETE FROM events WHERE n <= (SELECT MAX(n) FROM events) - ?",
                              (keep,))

    def _write(self, device: Device, what: str) -> None:
        self._dirty.discard(device.id)
        self._db.conn.execute(_UPSERT, _row(device))
        self._notify(device, what)

    def _notify(self, device: Device, what: str) -> None:
        for listener in self._listeners:
            try:
                listener(device, what)
            except Exception:
                log.exception("registry_listener_failed device=%s what=%s", device.id, what)
