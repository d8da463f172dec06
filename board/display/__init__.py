"""The display seam: whole RGB frames to the hall's TV, with a KMS/DRM and a simulated backend.

The agent draws every screen itself (Pillow and numpy) and hands the display finished frames of
exactly the display's mode, as `(height, width, 3)` uint8 RGB. The mode comes from the display
(the TV's preferred mode over HDMI: 1280x720, 1920x1080, ...), never from configuration, so one
image fits every hall. A display that is absent (no HDMI cable, TV unplugged, no DRM device)
raises `DisplayMissing` from `start` or `show`: the caller reports it as a health fault and tries
again later; it is never a reason to stop the agent.
"""

from __future__ import annotations

import abc
import logging
from typing import Literal

import numpy as np
import numpy.typing as npt

from tiepdan.board.errors import BoardError

__all__ = ["BACKENDS", "Display", "DisplayMissing", "Rgb", "open_display"]

log = logging.getLogger(__name__)

Rgb = npt.NDArray[np.uint8]
Backend = Literal["kmsdrm", "simulated"]
BACKENDS: tuple[Backend, ...] = ("kmsdrm", "simulated")


class DisplayMissing(BoardError):
    """No display to draw on right now (unplugged, switched off at the wall, no DRM device)."""


class Display(abc.ABC):
    """One full-screen output. `mode` is `(width, height)` once started, else None."""

    backend: Backend

    def __init__(self) -> None:
        self.mode: tuple[int, int] | None = None

    @abc.abstractmethod
    async def start(self) -> tuple[int, int]:
        """Take the output and return its mode; raises DisplayMissing when there is none."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Let go of the output (idempotent)."""

    @abc.abstractmethod
    async def show(self, frame: Rgb) -> None:
        """Put `frame` on screen; it must have exactly the display's mode."""

    def check(self, frame: Rgb) -> None:
        """Refuse a frame the display cannot take, naming what is wrong."""
        if self.mode is None:
            raise DisplayMissing(f"{self.backend} display is not started")
        width, height = self.mode
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise BoardError(
                f"frame of shape {frame.shape} {frame.dtype} does not fit the display's "
                f"{width}x{height} RGB mode"
            )


def open_display(backend: str, *, width: int = 1280, height: int = 720,
                 driver: str = "kmsdrm") -> Display:
    """Build (not start) a display. `width`/`height` are the simulated display's mode only;
    `driver` is SDL's video driver for the real one (`offscreen` lets a host without a screen
    run the same code)."""
    display: Display
    if backend == "kmsdrm":
        from tiepdan.board.display.kmsdrm import KmsDisplay

        display = KmsDisplay(driver=driver)
    elif backend == "simulated":
        from tiepdan.board.display.simulated import SimulatedDisplay

        display = SimulatedDisplay(width, height)
    else:
        raise BoardError(f"unknown display backend {backend!r}; expected one of "
                         f"{', '.join(BACKENDS)}")
    log.info("display_open backend=%s", backend)
    return display
