"""What the LEDs say: one place maps the agent's state to a pattern per LED.

A commune officer reads the box only through its lights, so the mapping is fixed and small:
online blinks while connecting and is steady once the controller can reach the box; in-call
blinks for an invitation and is steady in a session; muted and recording are plain on/off; an
alarm (disk full, recorder failure) overrides the recording LED with the error pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

Pattern = Literal["off", "on", "blink", "fast_blink", "pulse_error"]


class LedPanel(Protocol):
    def set_led(self, name: str, pattern: str) -> None: ...


@dataclass(frozen=True)
class Status:
    connected: bool = False
    invited: bool = False
    in_call: bool = False
    joining: bool = False
    muted: bool = False
    recording: bool = False
    alarm: bool = False


def patterns(status: Status) -> dict[str, Pattern]:
    return {
        "online": "on" if status.connected else "blink",
        "in_call": (
            "on" if status.in_call
            else "fast_blink" if status.joining
            else "blink" if status.invited
            else "off"
        ),
        "muted": "on" if status.muted else "off",
        "recording": "pulse_error" if status.alarm else "on" if status.recording else "off",
    }


class Indicators:
    def __init__(self, panel: LedPanel) -> None:
        self._panel = panel
        self.status = Status()
        self._shown: dict[str, Pattern] = {}
        self._show()

    def update(self, **changes: bool) -> None:
        known = {f.name for f in fields(Status)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown indicator fields: {sorted(unknown)}")
        self.status = replace(self.status, **changes)
        self._show()

    def _show(self) -> None:
        for led, pattern in patterns(self.status).items():
            if self._shown.get(led) != pattern:
                self._panel.set_led(led, pattern)
                self._shown[led] = pattern
