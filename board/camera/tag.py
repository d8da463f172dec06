"""A machine-readable tag burned into synthetic video: whose picture, which frame, captured when.

The tag must survive what a multi-point session does to a picture: VP8/H.264 compression
twice (box to bridge, bridge to viewer) and downscaling into a tile of a composed grid (down to
1/3). So it is a strip of large black and white cells across the bottom of the frame, laid out in
fractions of the frame size so that any scaled copy reads the same; each row starts with a white
and a black reference cell, and a CRC-16 makes a damaged read come back as None, not as a wrong
answer.
"""

from __future__ import annotations

import binascii
import hashlib
import struct
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Tag", "encode_tag", "label_hash", "now_ms", "read_tag", "tag_top"]

# The frame height is split into 15 cell rows; the tag takes the bottom four (24 px at 360p).
ROW_DIVISIONS = 15
TAG_ROWS_FROM = 11
ROWS = ROW_DIVISIONS - TAG_ROWS_FROM
COLUMNS = 22  # 29 px wide at 640 px, still ~10 px in a 1/3-scale tile.
REFERENCES = 2  # white, black at the start of each row
BITS = ROWS * (COLUMNS - REFERENCES)  # 80 = 16 label + 16 counter + 32 time + 16 CRC
WHITE = 235
BLACK = 16
# A picture without a tag rarely has 4 bright cells and 4 dark ones exactly where the
# references sit; demanding this much contrast keeps read_tag from decoding noise.
MIN_CONTRAST = 48

Plane = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Tag:
    """`time_ms` is wall-clock capture time in ms modulo 2**32 (wraps every ~49 days)."""

    label_hash: int
    counter: int
    time_ms: int

    @classmethod
    def stamp(cls, label: str, counter: int) -> Tag:
        return cls(label_hash(label), counter & 0xFFFF, now_ms())

    def age_ms(self, at_ms: int | None = None) -> int:
        """Milliseconds from capture to `at_ms` (default now), correct across the wrap."""
        at = now_ms() if at_ms is None else at_ms
        delta = (at - self.time_ms) & 0xFFFFFFFF
        return delta - (1 << 32) if delta >= 1 << 31 else delta


def label_hash(label: str) -> int:
    """A 16-bit hash of a point's label that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=2).digest(), "big")


def now_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


def tag_top(height: int) -> int:
    """First row of the tag strip in a frame of this height; the picture lives above it."""
    return round(height * TAG_ROWS_FROM / ROW_DIVISIONS)


def encode_tag(tag: Tag, y_plane: Plane) -> None:
    """Draw `tag` into the bottom strip of a luma plane, in place."""
    payload = struct.pack(">HHI", tag.label_hash & 0xFFFF, tag.counter & 0xFFFF, tag.time_ms)
    word = payload + struct.pack(">H", binascii.crc_hqx(payload, 0xFFFF))
    bits = np.unpackbits(np.frombuffer(word, dtype=np.uint8)).reshape(ROWS, -1)
    cells = np.empty((ROWS, COLUMNS), dtype=np.uint8)
    cells[:, 0] = WHITE
    cells[:, 1] = BLACK
    cells[:, REFERENCES:] = np.where(bits == 1, WHITE, BLACK)
    height, width = y_plane.shape
    rows, cols = _edges(height, width)
    pixels = np.repeat(np.repeat(cells, np.diff(rows), axis=0), np.diff(cols), axis=1)
    y_plane[rows[0] :, :] = pixels


def read_tag(y_plane: npt.NDArray[Any]) -> Tag | None:
    """Decode the tag from the luma of one whole picture, at any scale; None if unreadable."""
    height, width = y_plane.shape
    if height < ROW_DIVISIONS * 2 or width < COLUMNS * 2:
        return None
    rows, cols = _edges(height, width)
    means = np.empty((ROWS, COLUMNS))
    for r in range(ROWS):
        # Sample the middle half of each cell: edges blur under scaling and compression.
        top, bottom = _inner(rows[r], rows[r + 1])
        band = y_plane[top:bottom]
        for c in range(COLUMNS):
            left, right = _inner(cols[c], cols[c + 1])
            means[r, c] = band[:, left:right].mean()
    white, black = means[:, 0], means[:, 1]
    if white.min() - black.max() < MIN_CONTRAST:
        return None
    threshold = ((white + black) / 2)[:, None]
    bits = (means[:, REFERENCES:] > threshold).astype(np.uint8).reshape(-1)
    word = np.packbits(bits).tobytes()
    payload, (crc,) = word[:8], struct.unpack(">H", word[8:])
    if binascii.crc_hqx(payload, 0xFFFF) != crc:
        return None
    hash_, counter, time_ms = struct.unpack(">HHI", payload)
    return Tag(hash_, counter, time_ms)


@lru_cache(maxsize=32)
def _edges(height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rows = tuple(round(height * (TAG_ROWS_FROM + i) / ROW_DIVISIONS) for i in range(ROWS + 1))
    cols = tuple(round(width * i / COLUMNS) for i in range(COLUMNS + 1))
    return rows, cols


def _inner(start: int, stop: int) -> tuple[int, int]:
    quarter = (stop - start) // 4
    return start + quarter, max(stop - quarter, start + quarter + 1)
