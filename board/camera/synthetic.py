"""A camera for boxes without one: the point's name, a moving strip, a clock and a tag.

Humans read the label and watch the strip move (a frozen strip means frozen video); machines
read the tag (see `tiepdan.board.camera.tag`). Everything that does not change is drawn once
with Pillow; a frame costs a few numpy slice copies, so a desk can run a whole fleet of these.
"""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tiepdan.board.camera import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, Camera
from tiepdan.board.camera.tag import Plane, Tag, encode_tag, label_hash, read_tag, tag_top
from tiepdan.board.errors import BoardError
from tiepdan.board.pacing import Pacer
from tiepdan.board.profile import CameraSpec

__all__ = ["SyntheticCamera", "Tag", "encode_tag", "label_hash", "read_tag", "render_card"]

log = logging.getLogger(__name__)

BACKGROUND = 48
INK = 235
# DejaVu covers Vietnamese diacritics (ư, ơ, ạ, ...); Pillow's bundled font may not.
LABEL_FONT = "DejaVuSans-Bold.ttf"
CLOCK_FONT = "DejaVuSansMono-Bold.ttf"
CLOCK_CHARS = "0123456789:# "
STRIP_SECONDS = 2.0  # the moving strip crosses the frame in this time
GRAIN_DRAWS = 16


@lru_cache(maxsize=8)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        log.warning("font_missing font=%s fallback=pillow_default", name)
        return ImageFont.load_default(size)


def render_card(label: str, width: int, height: int) -> Plane:
    """The still part of the picture (above the tag strip): the label, large and centred."""
    picture = tag_top(height)
    image = Image.new("L", (width, picture), BACKGROUND)
    draw = ImageDraw.Draw(image)
    size = max(8, int(picture * 0.28))
    while True:
        font = _font(LABEL_FONT, size)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        if right - left <= width * 0.92 or size <= 8:
            break
        size = int(size * 0.9)
    x = (width - (right - left)) / 2 - left
    y = picture * 0.45 - (bottom - top) / 2 - top
    draw.text((x, y), label, fill=INK, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


class SyntheticCamera(Camera):
    def __init__(self, spec: CameraSpec, *, label: str) -> None:
        super().__init__(spec)
        if self.width < 64 or self.height < 64:
            raise BoardError(
                f"synthetic camera needs at least 64x64, got {self.width}x{self.height}"
            )
        self.label = label
        self.label_hash = label_hash(label)
        self.frames = 0
        self._pacer: Pacer | None = None
        w, h = self.width, self.height
        self._picture = tag_top(h)
        self._card = render_card(label, w, h)
        self._cards = self._grainy_cards(spec.grain)
        self._glyphs, self._glyph_box = self._clock_glyphs()
        self._strip, self._strip_rows = self._moving_strip()
        # Luma is redrawn per frame; chroma is a fixed per-label tint, drawn once.
        self._yuv = np.empty((h * 3 // 2, w), dtype=np.uint8)
        self._yuv[h:] = self._chroma()

    def _grainy_cards(self, grain: int) -> list[Plane]:
        """The card with sensor-like grain, a few independent draws cycled frame by frame, so
        the picture costs an encoder what a real camera's does at no cost per frame here."""
        if grain <= 0:
            return [self._card]
        rng = np.random.default_rng(self.label_hash)
        return [np.clip(self._card.astype(np.int16) +
                        rng.integers(-grain, grain + 1, self._card.shape, dtype=np.int16),
                        0, 255).astype(np.uint8) for _ in range(GRAIN_DRAWS)]

    def _clock_glyphs(self) -> tuple[dict[str, Plane], tuple[int, int]]:
        size = max(8, int(self._picture * 0.11))
        font = _font(CLOCK_FONT, size)
        boxes = [
            ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), c, font=font)
            for c in CLOCK_CHARS
        ]
        gw = math.ceil(max(b[2] for b in boxes)) + 1
        gh = math.ceil(max(b[3] for b in boxes)) + 1
        glyphs = {}
        for char in CLOCK_CHARS:
            image = Image.new("L", (gw, gh), BACKGROUND)
            ImageDraw.Draw(image).text((0, 0), char, fill=INK, font=font)
            glyphs[char] = np.asarray(image, dtype=np.uint8).copy()
        return glyphs, (gh, gw)

    def _moving_strip(self) -> tuple[Plane, slice]:
        w, p = self.width, self._picture
        period = max(8, w // 10)
        rows = slice(int(p * 0.76), int(p * 0.92))
        blocks = (np.arange(w + period) // (period // 2)) % 2
        strip = np.where(blocks == 1, 200, 90).astype(np.uint8)
        return np.broadcast_to(strip, (rows.stop - rows.start, w + period)), rows

    def _chroma(self) -> Plane:
        w, h = self.width, self.height
        angle = 2 * np.pi * self.label_hash / 0x10000
        tint_u, tint_v = 128 + 40 * np.cos(angle), 128 + 40 * np.sin(angle)
        # Tint the background only, and leave the tag strip grey so it stays black and white.
        ink = self._card[::2, ::2] > (BACKGROUND + INK) // 2
        u = np.full((h // 2, w // 2), 128, dtype=np.uint8)
        v = u.copy()
        rows = ink.shape[0]
        u[:rows] = np.where(ink, 128, tint_u).astype(np.uint8)
        v[:rows] = np.where(ink, 128, tint_v).astype(np.uint8)
        return np.concatenate([u.reshape(-1, w), v.reshape(-1, w)])

    async def start(self) -> None:
        self._pacer = Pacer(self.fps)
        log.info(
            "camera_started backend=synthetic label=%r size=%dx%d",
            self.label,
            self.width,
            self.height,
        )

    async def stop(self) -> None:
        self._pacer = None

    async def read(self) -> av.VideoFrame:
        if self._pacer is None:
            raise BoardError("camera is not started")
        tick = await self._pacer.tick()
        frame = av.VideoFrame.from_ndarray(self.render(tick), format="yuv420p")
        frame.pts = tick * VIDEO_CLOCK_RATE // self.fps
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def render(self, tick: int) -> Plane:
        """Draw the next frame (I420 layout) for clock tick `tick`; returns a reused buffer."""
        y = self._yuv[: self.height]
        y[: self._picture] = self._cards[tick % len(self._cards)]
        period = self._strip.shape[1] - self.width
        offset = int(tick * self.width / (STRIP_SECONDS * self.fps)) % period
        y[self._strip_rows] = self._strip[:, offset : offset + self.width]
        text = f"#{self.frames % 1_000_000:06d} {time.strftime('%H:%M:%S')}"
        gh, gw = self._glyph_box
        top, left = int(self._picture * 0.05), int(self.width * 0.03)
        for i, char in enumerate(text[: (self.width - left) // gw]):
            y[top : top + gh, left + i * gw : left + (i + 1) * gw] = self._glyphs[char]
        encode_tag(Tag.stamp(self.label, self.frames), y)
        self.frames += 1
        return self._yuv
