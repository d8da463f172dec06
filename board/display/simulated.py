"""A display for hosts without one: keeps the last frames it was shown, writes PNG snapshots.

Tests read what the hall would see from `latest()` (the synthetic tags in a composed picture
survive the trip, see `tiepdan.board.camera.tag`); the demo and `docs/screens/` use
`snapshot()`. `unplug()` and `plug()` stand in for the HDMI cable.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from PIL import Image

from tiepdan.board.display import Display, DisplayMissing, Rgb
from tiepdan.board.errors import BoardError

__all__ = ["SimulatedDisplay"]

KEEP = 4


class SimulatedDisplay(Display):
    backend = "simulated"

    def __init__(self, width: int, height: int, *, keep: int = KEEP) -> None:
        super().__init__()
        if width < 320 or height < 240 or width % 2 or height % 2:
            raise BoardError(f"simulated display needs an even size of at least 320x240, "
                             f"got {width}x{height}")
        self.size = (width, height)
        self.connected = True
        self.shown = 0
        self._frames: collections.deque[tuple[float, Rgb]] = collections.deque(maxlen=keep)

    async def start(self) -> tuple[int, int]:
        if not self.connected:
            raise DisplayMissing("simulated display is unplugged")
        self.mode = self.size
        return self.size

    async def stop(self) -> None:
        self.mode = None

    async def show(self, frame: Rgb) -> None:
        if not self.connected:
            self.mode = None
            raise DisplayMissing("simulated display is unplugged")
        self.check(frame)
        self._frames.append((time.monotonic(), frame.copy()))
        self.shown += 1

    def unplug(self) -> None:
        self.connected = False

    def plug(self) -> None:
        self.connected = True

    def latest(self) -> Rgb | None:
        """The frame on screen now (a copy the display keeps), or None before the first."""
        return self._frames[-1][1] if self._frames else None

    def shown_at(self) -> float | None:
        """`time.monotonic()` when the frame on screen was shown."""
        return self._frames[-1][0] if self._frames else None

    def snapshot(self, path: Path, *, optimize: bool = True) -> Path:
        """Write the frame on screen as a PNG (whole or not at all: written aside, then renamed
        over, so a viewer never opens half a file); BoardError before anything was shown."""
        frame = self.latest()
        if frame is None:
            raise BoardError("nothing has been shown yet")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        Image.fromarray(frame, "RGB").save(partial, format="PNG", optimize=optimize)
        os.replace(partial, path)
        return path
