"""Screen care: dim or blank the hall's TV outside office hours, and (optionally) HDMI-CEC.

A TV showing the same status screen all night ages (burn-in on OLED and plasma panels) and
lights an empty hall. Outside the configured hours the idle screen is dimmed or blanked; anything
that needs people (an invitation, a call, an upload to keep the power on for, a fault) lights it
fully whatever the hour. With `screen.cec = true` the box also switches the TV to standby when it
blanks and back on (`Image View On`, which also selects the box's input) when it lights again,
through `cec-ctl` (Debian `v4l-utils`) on the Pi's `/dev/cec0`. CEC is off by default because
many TVs implement it badly (wrong input, or ignoring standby); failures are logged, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import datetime, time
from typing import Literal

import numpy as np

from tiepdan.board.display import Rgb

__all__ = ["Cec", "Level", "OfficeHours", "apply_level"]

log = logging.getLogger(__name__)

Level = Literal["on", "dim", "blank"]
CEC_TIMEOUT_S = 10.0


class OfficeHours:
    """`window` is "HH:MM-HH:MM" (may cross midnight; "" means always), `days` ISO weekdays."""

    def __init__(self, window: str, days: list[int], outside: Level, dim: float) -> None:
        self.window = window
        self.days = frozenset(days)
        self.outside: Level = outside
        self.dim = dim
        self._span: tuple[time, time] | None = None
        if window:
            start, end = window.split("-")
            self._span = (time.fromisoformat(start), time.fromisoformat(end))

    def open(self, now: datetime) -> bool:
        if self._span is None:
            return True
        if now.isoweekday() not in self.days:
            return False
        start, end = self._span
        moment = now.time()
        return start <= moment < end if start <= end else moment >= start or moment < end

    def level(self, now: datetime) -> Level:
        return "on" if self.open(now) else self.outside


def apply_level(frame: Rgb, level: Level, dim: float) -> Rgb:
    """The frame as shown at `level` (a new array unless `on`)."""
    if level == "on":
        return frame
    if level == "blank":
        return np.zeros_like(frame)
    return (frame.astype(np.uint16) * int(dim * 256) >> 8).astype(np.uint8)


class Cec:
    """Turns the TV on and off with `cec-ctl`; remembers what it last asked for."""

    def __init__(self, device: str, program: str = "cec-ctl") -> None:
        self.device = device
        self.program = program
        self.error: str | None = None
        self.powered: bool | None = None

    async def power(self, on: bool) -> bool:
        """Ask the TV to wake (and show our input) or to go to standby; True if it was sent."""
        if self.powered == on:
            return True
        executable = shutil.which(self.program)
        if executable is None:
            return self._failed(f"{self.program} not found (Debian: apt install v4l-utils)")
        # Claim a playback device's logical address first; then talk to the TV (address 0).
        steps = [["--playback"], ["--to", "0", "--image-view-on" if on else "--standby"]]
        for step in steps:
            try:
                process = await asyncio.create_subprocess_exec(
                    executable, "-d", self.device, *step, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                async with asyncio.timeout(CEC_TIMEOUT_S):
                    _, stderr = await process.communicate()
            except (OSError, TimeoutError) as exc:
                return self._failed(f"{self.program} {' '.join(step)}: {exc!r}")
            if process.returncode != 0:
                said = stderr.decode(errors="replace")[:200]
                return self._failed(f"{self.program} {' '.join(step)} exited "
                                    f"{process.returncode}: {said}")
        log.info("cec_power on=%s device=%s", on, self.device)
        self.powered, self.error = on, None
        return True

    def _failed(self, error: str) -> bool:
        if error != self.error:
            log.warning("cec_failed error=%s", error)
        self.error = error
        return False
