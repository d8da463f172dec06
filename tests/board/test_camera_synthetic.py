from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from tiepdan.board.camera import VIDEO_TIME_BASE, open_camera
from tiepdan.board.camera.synthetic import INK, SyntheticCamera, render_card
from tiepdan.board.camera.tag import label_hash, read_tag, tag_top
from tiepdan.board.errors import BoardError
from tiepdan.board.pacing import Pacer
from tiepdan.board.profile import BoardProfile, CameraSpec


async def test_frames_follow_aiortc_conventions(sim: BoardProfile) -> None:
    camera = open_camera(sim.camera, label="sim-01")
    assert isinstance(camera, SyntheticCamera)
    assert (camera.width, camera.height, camera.fps) == (640, 360, 15)
    assert camera.hardware_encoder is False
    async with camera:
        frames = [await camera.read() for _ in range(4)]
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (640, 360, "yuv420p")
        assert frame.time_base == VIDEO_TIME_BASE
    pts = [f.pts for f in frames]
    # 90 kHz clock at 15 fps: 6000 per frame, unless the test machine made a frame late.
    assert pts[0] == 0
    assert all(b > a and (b - a) % 6000 == 0 for a, b in itertools.pairwise(pts))


async def test_frames_carry_the_points_tag(sim: BoardProfile) -> None:
    async with open_camera(sim.camera, label="Xã Hưng Nguyên") as camera:
        tags = [read_tag((await camera.read()).to_ndarray(format="gray")) for _ in range(3)]
    assert [t.counter for t in tags if t] == [0, 1, 2]
    assert {t.label_hash for t in tags if t} == {label_hash("Xã Hưng Nguyên")}


async def test_read_before_start_is_an_error(sim: BoardProfile) -> None:
    camera = open_camera(sim.camera, label="x")
    with pytest.raises(BoardError, match="not started"):
        await camera.read()
    with pytest.raises(NotImplementedError):
        await camera.read_encoded()


def test_label_is_drawn_large() -> None:
    card = render_card("Xã Hưng Nguyên", 640, 360)
    assert card.shape == (tag_top(360), 640)
    ink_rows = np.flatnonzero((card > INK - 40).any(axis=1))
    ink_cols = np.flatnonzero((card > INK - 40).any(axis=0))
    assert ink_rows.size > 360 / 8  # text at least an eighth of the frame tall
    assert ink_cols.size > 640 / 2  # and spanning more than half its width


def test_vietnamese_diacritics_render_as_distinct_glyphs() -> None:
    # A font without Vietnamese glyphs draws the same "missing" box for every one of them.
    cards = [render_card(word, 640, 360) for word in ("Hưng", "Hơng", "Hung")]
    assert not np.array_equal(cards[0], cards[1])
    assert not np.array_equal(cards[0], cards[2])


def test_frame_shows_the_card() -> None:
    label = "Phường Vinh Tân"
    camera = SyntheticCamera(CameraSpec("synthetic", "", 640, 360, 15), label=label)
    y = camera.render(0)[:360]
    card = render_card(label, 640, 360)
    # Between the clock line and the moving strip the frame is exactly the label card.
    rows = slice(int(tag_top(360) * 0.2), int(tag_top(360) * 0.7))
    assert np.array_equal(y[rows], card[rows])


def test_pattern_moves_and_points_look_different() -> None:
    spec = CameraSpec("synthetic", "", 640, 360, 15)
    a, b = SyntheticCamera(spec, label="sim-01"), SyntheticCamera(spec, label="sim-02")
    first, second = a.render(0).copy(), a.render(1).copy()
    picture = tag_top(360)
    assert not np.array_equal(first[:picture], second[:picture])  # the strip moved
    other = b.render(0)
    assert not np.array_equal(first[:picture], other[:picture])  # other label
    assert not np.array_equal(first[360:], other[360:])  # and another tint


def test_tiny_frames_are_refused() -> None:
    with pytest.raises(BoardError, match="at least 64x64"):
        SyntheticCamera(CameraSpec("synthetic", "", 32, 32, 15), label="x")


async def test_a_late_reader_skips_frames_instead_of_bursting() -> None:
    pacer = Pacer(50)
    assert await pacer.tick() == 0
    assert await pacer.tick() == 1
    await asyncio.sleep(0.3)  # at least 15 ticks' worth
    late = await pacer.tick()
    assert late >= 15
    assert await pacer.tick() == late + 1
