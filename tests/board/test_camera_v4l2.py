"""The V4L2 backend, driven through FFmpeg's lavfi test source: same code path, no camera."""

from __future__ import annotations

import av
import numpy as np
import pytest

from tiepdan.board.camera import VIDEO_TIME_BASE, open_camera
from tiepdan.board.camera.v4l2 import V4l2Camera, source_for
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import CameraSpec

pytestmark = pytest.mark.skipif("lavfi" not in av.formats_available, reason="FFmpeg without lavfi")

TESTSRC = "lavfi:testsrc=size=320x240:rate=15"


def spec(device: str = TESTSRC, width: int = 320, height: int = 240) -> CameraSpec:
    return CameraSpec("v4l2", device, width, height, 15)


async def test_reads_real_decoded_frames() -> None:
    camera = open_camera(spec(), label="usb")
    assert isinstance(camera, V4l2Camera)
    async with camera:
        frames = [await camera.read() for _ in range(5)]
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
        assert frame.time_base == VIDEO_TIME_BASE
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and pts == sorted(set(pts))
    # testsrc draws colour bars and a moving gradient: real content that changes.
    first, last = (f.to_ndarray(format="gray") for f in (frames[0], frames[-1]))
    assert first.std() > 20
    assert not np.array_equal(first, last)


async def test_frames_are_scaled_to_the_profile_size() -> None:
    async with open_camera(spec(width=160, height=120), label="usb") as camera:
        frame = await camera.read()
    assert (frame.width, frame.height, frame.format.name) == (160, 120, "yuv420p")


async def test_end_of_stream_is_a_board_error() -> None:
    device = "lavfi:testsrc=size=320x240:rate=15:duration=0.2"
    async with open_camera(spec(device), label="usb") as camera:
        with pytest.raises(BoardError, match="stopped delivering frames"):
            for _ in range(10):
                await camera.read()


async def test_missing_device_is_a_board_error() -> None:
    camera = open_camera(spec("/dev/video-nonexistent"), label="usb")
    with pytest.raises(BoardError, match="cannot open camera '/dev/video-nonexistent'"):
        await camera.start()


async def test_read_before_start_is_an_error() -> None:
    with pytest.raises(BoardError, match="not started"):
        await open_camera(spec(), label="usb").read()


def test_device_paths_open_v4l2_with_the_profile_mode() -> None:
    source = source_for(CameraSpec("v4l2", "/dev/video0", 1280, 720, 30))
    assert (source.url, source.format) == ("/dev/video0", "v4l2")
    assert source.options == {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ("webcam", "neither /dev/videoN"),
        ("nosuchformat:x", "no input format"),
        ("lavfi:", "neither"),
    ],
)
def test_bad_device_strings(device: str, problem: str) -> None:
    with pytest.raises(BoardError, match=problem):
        source_for(spec(device))
