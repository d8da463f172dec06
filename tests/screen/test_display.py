"""The display seam: the simulated twin, and the KMS/DRM backend as far as a host without HDMI
allows (SDL's offscreen driver runs the same pygame code; the kmsdrm driver finds no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiepdan.board.display import DisplayMissing, open_display
from tiepdan.board.display.kmsdrm import KmsDisplay, hdmi_connected
from tiepdan.board.display.simulated import SimulatedDisplay
from tiepdan.board.errors import BoardError


def picture(width: int, height: int) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


async def test_the_simulated_display_keeps_frames_and_writes_png(tmp_path: Path) -> None:
    display = SimulatedDisplay(1280, 720)
    assert await display.start() == (1280, 720)
    frame = picture(1280, 720)
    await display.show(frame)
    frame[:] = 0  # the caller reuses its buffer; the display kept its own copy
    shown = display.latest()
    assert shown is not None and shown.any() and display.shown == 1
    path = display.snapshot(tmp_path / "screens" / "one.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), shown)


async def test_wrong_sizes_and_an_unplugged_display_are_errors_not_crashes() -> None:
    display = SimulatedDisplay(1280, 720)
    with pytest.raises(DisplayMissing):
        await display.show(picture(1280, 720))  # not started
    await display.start()
    with pytest.raises(BoardError, match="does not fit the display's 1280x720"):
        await display.show(picture(1920, 1080))
    with pytest.raises(BoardError, match="does not fit"):
        await display.show(picture(1280, 720)[..., :1])
    display.unplug()
    with pytest.raises(DisplayMissing):
        await display.show(picture(1280, 720))
    with pytest.raises(DisplayMissing):
        await display.start()
    display.plug()
    assert await display.start() == (1280, 720)
    with pytest.raises(BoardError, match="simulated display needs"):
        SimulatedDisplay(100, 100)
    with pytest.raises(BoardError, match="unknown display backend 'fbdev'"):
        open_display("fbdev")


async def test_the_kms_backend_draws_through_sdl() -> None:
    display = KmsDisplay(driver="offscreen")
    mode = await display.start()
    try:
        width, height = mode
        assert width >= 320 and height >= 240
        frame = picture(width, height)
        await display.show(frame)
        assert np.array_equal(await display._call(display.read_back), frame)
        with pytest.raises(BoardError, match="does not fit"):
            await display.show(picture(width + 2, height))
    finally:
        await display.stop()
    assert display.mode is None


def connectors(root: Path, **status: str) -> Path:
    for name, value in status.items():
        folder = root / f"card1-{name}"
        folder.mkdir(parents=True)
        (folder / "status").write_text(value + "\n")
    return root


async def test_no_hdmi_cable_is_reported_as_a_missing_display(tmp_path: Path) -> None:
    none = connectors(tmp_path / "a", **{"HDMI-A-1": "disconnected", "HDMI-A-2": "disconnected"})
    assert not hdmi_connected(none)
    with pytest.raises(DisplayMissing, match="no HDMI display connected"):
        await KmsDisplay(sysfs=none).start()
    one = connectors(tmp_path / "b", **{"HDMI-A-1": "disconnected", "HDMI-A-2": "connected"})
    assert hdmi_connected(one)
    assert not hdmi_connected(tmp_path / "no-drm-here")


async def test_kmsdrm_without_a_drm_device_is_a_missing_display(tmp_path: Path) -> None:
    """A TV is "connected" but SDL cannot take the output (here: no DRM device at all)."""
    sysfs = connectors(tmp_path, **{"HDMI-A-1": "connected"})
    display = KmsDisplay(driver="kmsdrm", sysfs=sysfs)
    with pytest.raises(DisplayMissing, match="cannot open the display with SDL's kmsdrm"):
        await display.start()
    assert display.mode is None
