"""The fleet as a rich table: the same view in the admin CLI and the demo's live screen."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

Column = tuple[str, Callable[[dict[str, Any]], str | Text]]

STATE_STYLE = {"ready": "green", "init": "yellow", "disconnected": "dim", "lost": "red"}


def _state(d: dict[str, Any]) -> Text:
    return Text(d["state"], style=STATE_STYLE.get(d["state"], ""))


def _health(key: str, fmt: str, default: object = None) -> Callable[[dict[str, Any]], str]:
    def cell(d: dict[str, Any]) -> str:
        health = d.get("health")
        value = None if health is None else health.get(key, default)
        return "-" if value is None else fmt.format(value)
    return cell


def _disk(d: dict[str, Any]) -> str:
    h = d.get("health") or {}
    if not h.get("disk_total_bytes"):
        return "-"
    return f"{h['disk_free_bytes'] / 2**30:.0f}G"


def _age(d: dict[str, Any]) -> str:
    if not d.get("last_seen"):
        return "-"
    seconds = max(0, time.time() - d["last_seen"])
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


COLUMNS: list[Column] = [
    ("device", lambda d: d["id"]),
    ("point", lambda d: Text.assemble(
        ("(!) ", "bold red") if (d.get("extra") or {}).get("identity_mismatch") else "",
        d.get("name") or "-")),
    ("kind", lambda d: d.get("kind") or "-"),
    ("state", _state),
    ("fw", lambda d: d.get("firmware") or "-"),
    ("cpu", _health("cpu_percent", "{:.0f}%")),
    ("temp", _health("cpu_temp_c", "{:.0f}°C")),
    ("mem", _health("mem_percent", "{:.0f}%")),
    ("disk", _disk),
    ("queued", _health("outbox", "{}", default=0)),
    ("seen", _age),
]

# Other parts add columns for what they track in a device's `extra` (call state, QoS, update).
EXTRA_COLUMNS: list[Column] = []

CALL_STYLE = {"live": "green", "joining": "yellow", "reconnecting": "red", "invited": "cyan"}


def _call(d: dict[str, Any]) -> str | Text:
    call = (d.get("extra") or {}).get("call")
    if not call or call.get("state") in (None, "idle"):
        return "-"
    muted = " muted" if call.get("muted") else ""
    return Text(f"{call['state']}{muted}", style=CALL_STYLE.get(call["state"], ""))


def _qos(d: dict[str, Any]) -> str:
    extra = d.get("extra") or {}
    qos, call = extra.get("call_qos"), extra.get("call") or {}
    if not qos or call.get("state") != "live":
        return "-"
    rtt = qos.get("rtt_ms")
    loss = qos.get("loss_received")
    return (f"{qos.get('fps_received', 0):.0f}/{qos.get('fps_sent', 0):.0f}fps "
            f"{qos.get('kbps_received', 0):.0f}k "
            f"rtt {'-' if rtt is None else f'{rtt:.0f}ms'} "
            f"loss {'-' if loss is None else f'{100 * loss:.1f}%'}")


EXTRA_COLUMNS += [("call", _call), ("call qos (rx/tx)", _qos)]


def fleet_table(devices: Sequence[dict[str, Any]], title: str = "fleet") -> Table:
    online = sum(1 for d in devices if d.get("online"))
    table = Table(title=f"{title}: {online}/{len(devices)} online", title_justify="left")
    columns = COLUMNS + EXTRA_COLUMNS
    for name, _ in columns:
        # Only the point's name may shrink; ids and figures must stay whole.
        table.add_column(name, no_wrap=True, overflow="ellipsis",
                         max_width=30 if name == "point" else None)
    for d in devices:
        table.add_row(*(cell(d) for _, cell in columns))
    return table
