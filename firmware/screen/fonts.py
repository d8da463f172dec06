"""The screens' typefaces, looked up at run time from Debian's font packages.

The box's package depends on `fonts-dejavu-core` (on Raspberry Pi OS Lite by default); Noto
(`fonts-noto-core`) is taken when DejaVu is absent. Both cover every Vietnamese diacritic
(ư, ơ, ặ, ỹ, ...), which Pillow's built-in font does not, so falling back to it is logged as a
fault people will see.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

from PIL import ImageFont

__all__ = ["CANDIDATES", "Font", "Weight", "font", "font_path"]

log = logging.getLogger(__name__)

Weight = Literal["regular", "bold", "mono"]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

CANDIDATES: dict[Weight, tuple[str, ...]] = {
    "regular": ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"),
    "bold": ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
             "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf"),
    "mono": ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
             "/usr/share/fonts/truetype/noto/NotoSansMono-Bold.ttf"),
}


@lru_cache(maxsize=8)
def font_path(weight: Weight) -> Path | None:
    """The first installed file for `weight`, or None (logged once)."""
    for candidate in CANDIDATES[weight]:
        path = Path(candidate)
        if path.is_file():
            return path
    log.error("font_missing weight=%s tried=%s fix='apt install fonts-dejavu-core'", weight,
              ",".join(CANDIDATES[weight]))
    return None


@lru_cache(maxsize=128)
def font(weight: Weight, size: int) -> Font:
    """A font of `size` pixels; Pillow's own (without Vietnamese) only if none is installed."""
    path = font_path(weight)
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(path), max(6, size))
