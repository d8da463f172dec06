"""Each box's recent health, kept in memory for the box page's history chart.

The registry keeps only the latest health; the console keeps the last few hundred samples per
box, thinned to one a minute-ish, which is what a person looking at a box needs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tiepdan.controller.fleet.registry import Device


class HealthHistory:
    def __init__(self, keep: int = 240, spacing: float = 15.0) -> None:
        self.keep = keep
        self.spacing = spacing
        self._samples: dict[str, deque[dict[str, Any]]] = {}

    def on_device(self, device: Device, what: str) -> None:
        """Registry listener: keep a sample when health arrives."""
        if what != "health" or not device.health:
            return
        samples = self._samples.setdefault(device.id, deque(maxlen=self.keep))
        ts = float(device.health.get("ts", 0)) / 1000
        if samples and ts - samples[-1]["ts"] < self.spacing:
            return
        samples.append({"ts": ts, "cpu": device.health.get("cpu_percent"),
                        "temp": device.health.get("cpu_temp_c"),
                        "mem": device.health.get("mem_percent")})

    def of(self, device: str) -> list[dict[str, Any]]:
        return list(self._samples.get(device, ()))
