"""The hall's TV over HDMI on Raspberry Pi OS Lite (no desktop): SDL2's KMSDRM driver via pygame.

Why SDL2 KMSDRM: it sets the connector's preferred mode (the TV says 1280x720 or 1920x1080 in its
EDID), page-flips on vblank (no tearing, unlike the fbdev emulation, whose mode is also fixed at
boot) and needs no X or Wayland. Raw DRM dumb buffers through ioctls would be our own copy of what
SDL already does. On Raspberry Pi OS install `python3-pygame` from apt (Debian's SDL2 is built
with KMSDRM; some PyPI wheels are not) and give the agent's user the `video` group.

Every SDL call runs on one thread of its own (SDL wants video on a single thread, and a flip
may wait for vblank): the event loop never blocks. With `driver="offscreen"` the same code runs on
a host without a screen, which is how the tests exercise it. Whether a TV is plugged in is read
from the DRM connectors in sysfs (`/sys/class/drm/card*-HDMI-A-*/status`), because SDL keeps
flipping into a disconnected connector without complaint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tiepdan.board.display import Display, DisplayMissing, Rgb
from tiepdan.board.errors import BoardError

__all__ = ["KmsDisplay", "hdmi_connected"]

log = logging.getLogger(__name__)

SYSFS_DRM = Path("/sys/class/drm")
RECHECK_S = 2.0  # how often `show` looks at the connector status


def hdmi_connected(sysfs: Path = SYSFS_DRM) -> bool:
    """True when some HDMI connector of some DRM card reports a connected sink."""
    for status in sorted(sysfs.glob("card*-HDMI-A-*/status")):
        try:
            if status.read_text().strip() == "connected":
                return True
        except OSError:
            continue
    return False


class KmsDisplay(Display):
    backend = "kmsdrm"

    def __init__(self, *, driver: str = "kmsdrm", sysfs: Path = SYSFS_DRM,
                 size: tuple[int, int] | None = None) -> None:
        """`size` asks for a mode (tests, benchmarks); None takes the display's preferred one."""
        super().__init__()
        self.driver = driver
        self.size = size
        self.sysfs = sysfs
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="display")
        self._screen: Any = None
        self._checked = 0.0

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def start(self) -> tuple[int, int]:
        if self.driver == "kmsdrm" and not hdmi_connected(self.sysfs):
            raise DisplayMissing(f"no HDMI display connected (no connected "
                                 f"{self.sysfs}/card*-HDMI-A-*)")
        mode: tuple[int, int] = await self._call(self._open)
        self.mode = mode
        self._checked = time.monotonic()
        log.info("display_started backend=kmsdrm driver=%s mode=%dx%d", self.driver, *mode)
        return mode

    def _open(self) -> tuple[int, int]:
        os.environ["SDL_VIDEODRIVER"] = self.driver
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as exc:
            raise BoardError("the KMS/DRM display needs pygame (Raspberry Pi OS: apt install "
                             "python3-pygame; elsewhere the `pi` extra)") from exc
        try:
            pygame.display.init()
            # (0, 0): the mode the display prefers, as SDL read it from the connector.
            self._screen = pygame.display.set_mode(self.size or (0, 0), pygame.FULLSCREEN)
            pygame.mouse.set_visible(False)
        except pygame.error as exc:
            pygame.display.quit()
            raise DisplayMissing(f"cannot open the display with SDL's {self.driver} driver: "
                                 f"{exc}") from None
        width, height = self._screen.get_size()
        return int(width), int(height)

    async def stop(self) -> None:
        if self._screen is not None:
            await self._call(self._close)
        self.mode = None

    def _close(self) -> None:
        import pygame

        self._screen = None
        pygame.display.quit()

    async def show(self, frame: Rgb) -> None:
        self.check(frame)
        now = time.monotonic()
        if self.driver == "kmsdrm" and now - self._checked > RECHECK_S:
            self._checked = now
            if not hdmi_connected(self.sysfs):
                await self.stop()
                raise DisplayMissing("the HDMI display was disconnected")
        await self._call(self._flip, frame)

    def _flip(self, frame: Rgb) -> None:
        import pygame

        height, width = frame.shape[:2]
        image = pygame.image.frombuffer(frame.data, (width, height), "RGB")
        self._screen.blit(image, (0, 0))
        pygame.display.flip()
        pygame.event.pump()  # SDL must see its events, or KMSDRM stalls on hotplug

    def read_back(self) -> Rgb:
        """What the display surface holds now (tests, on the offscreen driver)."""
        import numpy as np
        import pygame

        array = pygame.surfarray.array3d(self._screen)
        return np.ascontiguousarray(array.swapaxes(0, 1))
