"""The fleet table keeps every figure whole on a narrow terminal; only the point name gives way."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from tiepdan.controller.cli.fleet_table import fleet_table


def _device(update: dict[str, Any] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "call": {"state": "live", "muted": True},
        "call_qos": {"fps_received": 14, "fps_sent": 15, "kbps_received": 1200, "rtt_ms": 102,
                     "loss_received": 0.0}}
    if update is not None:
        extra["update"] = update
    return {"id": "xa-hung-nguyen", "name": "Ban Tiếp công dân tỉnh Nghệ An", "state": "ready",
            "online": True, "firmware": "0.1.0", "last_seen": time.time() - 2,
            "health": {"cpu_percent": 95, "cpu_temp_c": 48, "mem_percent": 4, "outbox": 0,
                       "disk_total_bytes": 1, "disk_free_bytes": 79 * 2**30},
            "extra": extra}


def _render(devices: list[dict[str, Any]], width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(fleet_table(devices, width=width))
    return console.export_text()


def test_figures_stay_whole_at_100_and_120_columns() -> None:
    for width in (100, 120):
        text = _render([_device()], width)
        assert all(len(line) <= width for line in text.splitlines())
        for figure in ("xa-hung-nguyen", "ready 2s", "95% 48°C m4% 79G", "live muted",
                       "14/15 1.2M 102ms 0.0%"):
            assert figure in text, (width, figure, text)
    assert "Ban Tiếp công dân tỉnh Nghệ An" not in _render([_device()], 100)


def test_update_column_appears_with_a_campaign() -> None:
    assert "update" not in _render([_device()], 160)
    text = _render([_device({"campaign": "c1", "status": "in_progress", "progress": 40.0})], 160)
    assert "in_progress 40%" in text
