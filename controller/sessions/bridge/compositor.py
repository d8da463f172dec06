"""The composed picture: a grid of 16:9 tiles, each point's name on its tile, the active speaker
framed.

Work is in I420 planes with numpy (copies) and libswscale (scaling, through PyAV), so one
frame costs a few milliseconds even for a dozen points. The frame around the active speaker
is drawn in the gutter between tiles, never over a picture, so nothing a point sends is hidden
(the burned-in test tag included). Names are rendered once per name and tile width.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Plane = npt.NDArray[np.uint8]

BACKGROUND = (24, 128, 128)  # Y, U, V: near black
PLACEHOLDER = (48, 128, 128)
HIGHLIGHT = (210, 16, 146)  # yellow
LABEL_BAND = 20  # luma of the name band
LABEL_INK = 235
FONT = "DejaVuSans-Bold.ttf"  # covers Vietnamese diacritics


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


def grid(count: int, width: int, height: int) -> tuple[list[Rect], int]:
    """Tiles for `count` points on a `width` x `height` canvas, and the gutter between them.

    Columns = ceil(sqrt(count)); every tile is 16:9 with even sides (4:2:0 chroma); a short
    last row is centred.
    """
    if count <= 0:
        return [], 0
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    gutter = max(2, (min(width, height) // 90) & ~1)
    cell_w, cell_h = width // cols, height // rows
    tile_w, tile_h = cell_w - 2 * gutter, cell_h - 2 * gutter
    if tile_w * 9 > tile_h * 16:
        tile_w = tile_h * 16 // 9
    else:
        tile_h = tile_w * 9 // 16
    tile_w, tile_h = max(2, tile_w & ~1), max(2, tile_h & ~1)
    top = (height - rows * (tile_h + 2 * gutter)) // 2
    rects = []
    for index in range(count):
        row, col = divmod(index, cols)
        in_row = min(cols, count - row * cols)
        left = (width - in_row * (tile_w + 2 * gutter)) // 2
        x = left + col * (tile_w + 2 * gutter) + gutter
        y = top + row * (tile_h + 2 * gutter) + gutter
        rects.append(Rect(x & ~1, y & ~1, tile_w, tile_h))
    return rects, gutter


@dataclass(frozen=True)
class TileView:
    rect: Rect
    name: str
    frame: av.VideoFrame | None
    speaking: bool


class Compositor:
    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"canvas must have even sides, got {width}x{height}")
        self.width, self.height = width, height
        self._buffer = np.empty((height * 3 // 2, width), dtype=np.uint8)
        flat = self._buffer.reshape(-1)
        y_size, c_size = width * height, (width // 2) * (height // 2)
        self._y = flat[:y_size].reshape(height, width)
        self._u = flat[y_size:y_size + c_size].reshape(height // 2, width // 2)
        self._v = flat[y_size + c_size:].reshape(height // 2, width // 2)

    def compose(self, tiles: list[TileView], gutter: int) -> av.VideoFrame:
        self._fill(0, 0, self.width, self.height, BACKGROUND)
        for tile in tiles:
            r = tile.rect
            if tile.speaking:
                g = gutter
                self._fill(r.x - g, r.y - g, r.width + 2 * g, r.height + 2 * g, HIGHLIGHT)
            if tile.frame is None:
                self._fill(r.x, r.y, r.width, r.height, PLACEHOLDER)
            else:
                self._paste(tile.frame, r)
            self._label(tile.name, r)
        return av.VideoFrame.from_ndarray(self._buffer, format="yuv420p")

    def _fill(self, x: int, y: int, w: int, h: int, yuv: tuple[int, int, int]) -> None:
        x, y = max(0, x) & ~1, max(0, y) & ~1
        w, h = min(w, self.width - x) & ~1, min(h, self.height - y) & ~1
        self._y[y:y + h, x:x + w] = yuv[0]
        self._u[y // 2:(y + h) // 2, x // 2:(x + w) // 2] = yuv[1]
        self._v[y // 2:(y + h) // 2, x // 2:(x + w) // 2] = yuv[2]

    def _paste(self, frame: av.VideoFrame, r: Rect) -> None:
        scaled = frame.reformat(width=r.width, height=r.height, format="yuv420p")
        for index, (target, w, h) in enumerate((
            (self._y[r.y:r.y + r.height, r.x:r.x + r.width], r.width, r.height),
            (self._u[r.y // 2:(r.y + r.height) // 2, r.x // 2:(r.x + r.width) // 2],
             r.width // 2, r.height // 2),
            (self._v[r.y // 2:(r.y + r.height) // 2, r.x // 2:(r.x + r.width) // 2],
             r.width // 2, r.height // 2),
        )):
            plane = scaled.planes[index]
            source = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
            target[:] = source[:h, :w]

    def _label(self, name: str, r: Rect) -> None:
        band = _label_band(name, r.width)
        h = min(band.shape[0], r.height) & ~1
        self._y[r.y:r.y + h, r.x:r.x + r.width] = band[:h]
        self._u[r.y // 2:(r.y + h) // 2, r.x // 2:(r.x + r.width) // 2] = 128
        self._v[r.y // 2:(r.y + h) // 2, r.x // 2:(r.x + r.width) // 2] = 128


@lru_cache(maxsize=256)
def _label_band(name: str, width: int) -> Plane:
    """The point's name, white on a dark band across the top of a tile of this width."""
    height = max(12, (width * 9 // 16) // 9) & ~1
    image = Image.new("L", (width, height), LABEL_BAND)
    draw = ImageDraw.Draw(image)
    size = max(8, int(height * 0.7))
    while True:
        font = _font(size)
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        if right - left <= width - 8 or size <= 8:
            break
        size = int(size * 0.9)
    draw.text((4 - left, (height - (bottom - top)) / 2 - top), name, fill=LABEL_INK, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        log.warning("font_missing font=%s fallback=pillow_default", FONT)
        return ImageFont.load_default(size)
