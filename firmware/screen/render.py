"""The in-call frame: the composed picture letterboxed, the box's own camera small, badges on top.

This runs for every received frame (15 per second from the bridge), so it does as little as
possible per frame: one swscale pass converts and scales the decoded picture straight to RGB
at its place on screen (a `VideoReformatter` of its own), one numpy copy puts it in
the reused screen buffer, and the badges are drawn with Pillow only when they change and then
blended into their own small rectangles. The black bars are painted only when the picture's
size changes. A frame of a size that cannot be shown is dropped and counted, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageDraw

from tiepdan.board.display import Rgb
from tiepdan.firmware.screen.fonts import font
from tiepdan.firmware.screen.screens import AMBER, DARK, GREEN, INK, RED, Layouts
from tiepdan.firmware.screen.state import Quality, ScreenState

__all__ = ["CallRenderer", "Placement", "fit"]

log = logging.getLogger(__name__)

MIN_SIDE = 16
MAX_SIDE = 8192
SELF_VIEW = 0.2  # of the display's width
# Bilinear: PyAV's default swscale filter is bicubic, 1.6x the CPU for a difference nobody sees
# from across a hall (measured with tools/bench/display.py).
SCALING = "BILINEAR"
QUALITY_BARS: dict[Quality, int] = {"good": 3, "fair": 2, "poor": 1, "unknown": 0}


@dataclass(frozen=True)
class Placement:
    x: int
    y: int
    width: int
    height: int


def fit(source: tuple[int, int], box: tuple[int, int]) -> Placement:
    """The largest even-sized rectangle of `source`'s aspect inside `box`, centred."""
    sw, sh = source
    bw, bh = box
    scale = min(bw / sw, bh / sh)
    width = max(2, min(bw, int(sw * scale) // 2 * 2))
    height = max(2, min(bh, int(sh * scale) // 2 * 2))
    return Placement((bw - width) // 2, (bh - height) // 2, width, height)


@dataclass
class _Badge:
    x: int
    y: int
    rgb: Rgb
    alpha: Rgb  # (h, w, 1) uint16, 0-255


class CallRenderer:
    def __init__(self, mode: tuple[int, int], layouts: Layouts) -> None:
        self.width, self.height = mode
        self.layouts = layouts
        self.buffer: Rgb = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        self.placement: Placement | None = None  # where the composed picture is
        self.self_view_at: Placement | None = None
        self.dropped = 0
        self._reformatter = VideoReformatter()
        self._badge_key: tuple[object, ...] | None = None
        self._badges: list[_Badge] = []
        self._under: list[Rgb] = []

    def compose(self, picture: av.VideoFrame | None, self_view: av.VideoFrame | None,
                state: ScreenState) -> Rgb:
        """The next in-call frame (a buffer reused by the next call)."""
        self._restore()  # take the last badges off: bars are never repainted otherwise
        if picture is not None:
            self._picture(picture)
        if self_view is not None:
            self._self_view(self_view)
        self._overlay(state)
        return self.buffer

    def _picture(self, frame: av.VideoFrame) -> None:
        size = (frame.width, frame.height)
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in size):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("screen_frame_dropped size=%dx%d dropped=%d", *size, self.dropped)
            return
        place = fit(size, (self.width, self.height))
        if place != self.placement:
            self.buffer[:] = 0  # new bars; a smaller picture must not leave the old one around
            self.placement = place
        rgb = self._scaled(frame, place)
        self.buffer[place.y:place.y + place.height, place.x:place.x + place.width] = rgb

    def _self_view(self, frame: av.VideoFrame) -> None:
        """Not mirrored: the hall sees itself as the others do (a document held up reads right)."""
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in (frame.width, frame.height)):
            return
        box = int(self.width * SELF_VIEW)
        place = fit((frame.width, frame.height), (box, box))
        border = max(2, self.height // 360)
        margin = self.layouts.px(24)
        x = self.width - margin - place.width
        y = self.height - margin - place.height
        self.buffer[y - border:y + place.height + border,
                    x - border:x + place.width + border] = INK
        self.self_view_at = Placement(x, y, place.width, place.height)
        self.buffer[y:y + place.height, x:x + place.width] = self._scaled(frame, place)

    def _scaled(self, frame: av.VideoFrame, place: Placement) -> Rgb:
        """RGB at the placement's size, through this renderer's own swscale context.

        `VideoFrame.to_ndarray(width=...)` would use the reformatter cached on the frame, which
        the recorder's thread uses on the same received frame at the same time: two threads on
        one SwsContext hang or corrupt. Reading the frame from two threads is safe.
        """
        out = self._reformatter.reformat(frame, format="rgb24", width=place.width,
                                         height=place.height, interpolation=SCALING)
        return cast(Rgb, out.to_ndarray())  # rgb24: (height, width, 3) uint8

    def _overlay(self, state: ScreenState) -> None:
        key = (state.muted, state.recording, state.quality, state.reconnecting,
               self.layouts._("Muted"))
        if key != self._badge_key:
            self._badge_key = key
            self._badges = self._draw_badges(state)
        self._under = []
        for badge in self._badges:
            h, w = badge.rgb.shape[:2]
            region = self.buffer[badge.y:badge.y + h, badge.x:badge.x + w]
            self._under.append(region.copy())
            blended = (region.astype(np.uint16) * (255 - badge.alpha)
                       + badge.rgb.astype(np.uint16) * badge.alpha) // 255
            region[:] = blended.astype(np.uint8)

    def _restore(self) -> None:
        for badge, under in zip(self._badges, self._under, strict=False):
            h, w = under.shape[:2]
            self.buffer[badge.y:badge.y + h, badge.x:badge.x + w] = under
        self._under = []

    def _draw_badges(self, state: ScreenState) -> list[_Badge]:
        """Recording, mute and link quality in a row at the bottom left (the top of every tile
        carries its point's name, which a badge must not hide); the self-view is bottom right."""
        _ = self.layouts._
        px = self.layouts.px
        margin, gap = px(24), px(14)
        pills = []
        if state.recording:
            pills.append(self._pill(_("Recording"), RED, INK, dot=True))
        if state.muted:
            pills.append(self._pill(_("Muted"), RED, INK, dot=False))
        pills.append(self._bars(state.quality))
        badges: list[_Badge] = []
        x = margin
        for rgb, alpha in pills:
            badges.append(_Badge(x, self.height - margin - rgb.shape[0], rgb, alpha))
            x += rgb.shape[1] + gap
        if state.reconnecting:
            rgb, alpha = self._pill(_("Reconnecting…"), AMBER, DARK, dot=False)
            badges.append(_Badge((self.width - rgb.shape[1]) // 2,
                                 (self.height - rgb.shape[0]) // 2, rgb, alpha))
        return badges

    def _pill(self, text: str, background: tuple[int, int, int], ink: tuple[int, int, int],
              *, dot: bool) -> tuple[Rgb, Rgb]:
        layouts = self.layouts
        px = layouts.px
        height = px(52)
        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        face = font("bold", px(28))
        text_width = int(probe.textlength(text, font=face))
        lead = px(44) if dot else px(22)
        width = lead + text_width + px(22)
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        fill = (*background, 240) if not dot else (0, 0, 0, 225)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=height // 2, fill=fill)
        if dot:
            r = px(11)
            cx, cy = px(24), height // 2
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*background, 255))
        draw.text((lead, height // 2), text, font=face, fill=(*ink, 255), anchor="lm")
        return _split(image)

    def _bars(self, quality: Quality) -> tuple[Rgb, Rgb]:
        px = self.layouts.px
        lit = QUALITY_BARS[quality]
        colour = {3: GREEN, 2: AMBER, 1: RED, 0: INK}[lit]
        width, height = px(84), px(52)
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=px(10), fill=(0, 0, 0, 225))
        for i in range(3):
            bar_h = px(12 + 10 * i)
            left = px(14 + 20 * i)
            fill = (*colour, 255) if i < lit else (120, 120, 120, 255)
            draw.rectangle((left, height - px(10) - bar_h, left + px(14), height - px(10)),
                           fill=fill)
        return _split(image)


def _split(image: Image.Image) -> tuple[Rgb, Rgb]:
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, :3].copy(), array[:, :, 3:].astype(np.uint16)
