"""The fleet as a rich table: the same view in the admin CLI and the demo's live screen."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
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


def _health_cell(d: dict[str, Any]) -> str:
    """CPU, temperature, memory and free disk in one narrow cell: "12% 48°C m31% 40G"."""
    h = d.get("health")
    if not h:
        return "-"
    parts = [f"{h['cpu_percent']:.0f}%" if h.get("cpu_percent") is not None else "-",
             f"{h['cpu_temp_c']:.0f}°C" if h.get("cpu_temp_c") is not None else "-",
             f"m{h['mem_percent']:.0f}%" if h.get("mem_percent") is not None else "-"]
    if h.get("disk_total_bytes"):
        parts.append(f"{h['disk_free_bytes'] / 2**30:.0f}G")
    return " ".join(parts)


def _state_seen(d: dict[str, Any]) -> Text:
    text = _state(d)
    if d.get("last_seen"):
        seconds = max(0, time.time() - d["last_seen"])
        text.append(f" {seconds:.0f}s" if seconds < 120 else f" {seconds / 60:.0f}m",
                    style="dim")
    return text


COLUMNS: list[Column] = [
    ("device", lambda d: d["id"]),
    ("point", lambda d: Text.assemble(
        ("(!) ", "bold red") if (d.get("extra") or {}).get("identity_mismatch") else "",
        d.get("name") or "-")),
    ("state", _state_seen),
    ("fw", lambda d: d.get("firmware") or "-"),
    ("health", _health_cell),
    ("q", _health("outbox", "{}", default=0)),
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
    return (f"{qos.get('fps_received', 0):.0f}/{qos.get('fps_sent', 0):.0f} "
            f"{qos.get('kbps_received', 0) / 1000:.1f}M "
            f"{'-' if rtt is None else f'{rtt:.0f}ms'} "
            f"{'-' if loss is None else f'{100 * loss:.1f}%'}")


def _update(d: dict[str, Any]) -> str | Text:
    update = (d.get("extra") or {}).get("update")
    if not update:
        return "-"
    status = update.get("status") or "-"
    progress = update.get("progress")
    shown = f"{status} {progress:.0f}%" if status == "in_progress" and progress is not None \
        else status
    return Text(shown, style=UPDATE_STYLE.get(status, ""))


UPDATE_STYLE = {"succeeded": "green", "in_progress": "yellow", "failed": "red",
                "rolled_back": "red", "rejected": "red"}

EXTRA_COLUMNS += [("call", _call), ("call qos rx/tx", _qos)]
# Shown only while some box has taken part in an update campaign.
UPDATE_COLUMN: Column = ("update", _update)


# What a cell needs to stay readable when the terminal is narrow (the point name gives way).
MIN_WIDTH = {"device": 14, "point": 8, "state": 8, "fw": 5, "health": 16, "q": 1,
             "call": 10, "call qos rx/tx": 22, "update": 9}


def fleet_table(devices: Sequence[dict[str, Any]], title: str = "fleet",
                width: int | None = None) -> Table:
    """`width`: the terminal's; the point name shrinks so that every figure stays on screen."""
    online = sum(1 for d in devices if d.get("online"))
    table = Table(title=f"{title}: {online}/{len(devices)} online", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = COLUMNS + EXTRA_COLUMNS
    if any((d.get("extra") or {}).get("update") for d in devices):
        columns = [*columns, UPDATE_COLUMN]
    point_width = 26
    if width is not None:
        others = sum(MIN_WIDTH.get(name, len(name)) + 2 for name, _ in columns if name != "point")
        point_width = max(8, min(point_width, width - others - 2))
    for name, _ in columns:
        # Only the point's name may shrink; ids and figures must stay whole.
        table.add_column(name, no_wrap=True, overflow="ellipsis",
                         min_width=MIN_WIDTH.get(name),
                         max_width=point_width if name == "point" else None)
    for d in devices:
        table.add_row(*(cell(d) for _, cell in columns))
    return table
