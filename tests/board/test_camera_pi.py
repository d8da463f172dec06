"""The picamera2 backend against a stand-in module with picamera2's API shape."""

from __future__ import annotations

import asyncio
import itertools
import sys

import av
import numpy as np
import pytest

from tests.board import picamera2_standin as standin
from tiepdan.board.camera import VIDEO_TIME_BASE, open_camera
from tiepdan.board.camera.pi import MAX_QUEUED_PACKETS, PiCamera, i420
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import CameraSpec, load_profile
from tiepdan.board.selftest import run_selftest

SPEC = CameraSpec("picamera2", "0", 320, 240, 30)


@pytest.fixture
def picamera2(monkeypatch: pytest.MonkeyPatch) -> type[standin.Picamera2]:
    for name, module in standin.modules(hardware_encoder=True).items():
        monkeypatch.setitem(sys.modules, name, module)
    return standin.Picamera2


@pytest.fixture
def picamera2_pi5(monkeypatch: pytest.MonkeyPatch) -> type[standin.Picamera2]:
    for name, module in standin.modules(hardware_encoder=False).items():
        monkeypatch.setitem(sys.modules, name, module)
    return standin.Picamera2


async def test_frames_are_cropped_from_the_padded_buffer(
    picamera2: type[standin.Picamera2],
) -> None:
    camera = open_camera(SPEC, label="pi")
    async with camera:
        frames = [await camera.read() for _ in range(3)]
    (device,) = picamera2.instances
    assert device.config is not None
    assert device.config["main"] == {"size": (320, 240), "format": "YUV420"}
    assert device.config["controls"] == {"FrameRate": 30}
    assert device.closed
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
        assert frame.time_base == VIDEO_TIME_BASE
        planes = frame.to_ndarray()
        y, chroma = planes[:240].astype(int), planes[240:]
        expected = (np.arange(240)[:, None] + np.arange(320)[None, :] + y[0, 0]) % 256
        assert np.array_equal(y, expected)  # no stride junk (255) leaked in
        u, v = chroma.reshape(-1)[: 160 * 120], chroma.reshape(-1)[160 * 120 :]
        assert (u == standin.U_VALUE).all() and (v == standin.V_VALUE).all()
    # pts come from the sensor timestamps: whole frames of a 30 fps sensor on a 90 kHz clock.
    pts = [f.pts for f in frames]
    assert pts[0] == 0
    assert all(b > a and (b - a) % 3000 == 0 for a, b in itertools.pairwise(pts))


async def test_hardware_h264_is_real_and_decodable(picamera2: type[standin.Picamera2]) -> None:
    camera = open_camera(SPEC, label="pi")
    assert camera.hardware_encoder is True
    async with camera:
        packets = [await camera.read_encoded() for _ in range(8)]
    (device,) = picamera2.instances
    assert device.encoder is not None
    assert device.encoder.repeat is True  # SPS/PPS with every keyframe for late joiners
    assert device.encoder.iperiod == 60
    assert packets[0].is_keyframe
    assert all(p.time_base == VIDEO_TIME_BASE for p in packets)
    pts = [p.pts for p in packets]
    assert pts[0] == 0 and pts == sorted(set(pts))
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in decoder.decode(p)]
    decoded += decoder.decode(None)
    assert len(decoded) == len(packets)
    assert {(f.width, f.height) for f in decoded} == {(320, 240)}


async def test_a_slow_reader_resumes_at_a_keyframe(picamera2: type[standin.Picamera2]) -> None:
    picamera2.frame_interval = 0.001
    async with open_camera(SPEC, label="pi") as camera:
        (device,) = picamera2.instances
        assert await asyncio.to_thread(device.wait_encoded, 3 * MAX_QUEUED_PACKETS, 30)
        first = await camera.read_encoded()
        assert first.pts is not None and first.pts > 0  # the backlog was dropped...
        assert first.is_keyframe  # ...up to a keyframe
        decoder = av.CodecContext.create("h264", "r")
        assert decoder.decode(first)  # decodable on its own: nothing before it is needed


async def test_pi5_has_no_hardware_encoder(picamera2_pi5: type[standin.Picamera2]) -> None:
    camera = open_camera(SPEC, label="pi")
    assert camera.hardware_encoder is False
    async with camera:
        frame = await camera.read()
        with pytest.raises(NotImplementedError, match=r"no hardware H\.264"):
            await camera.read_encoded()
    assert frame.width == 320
    (device,) = picamera2_pi5.instances
    assert device.encoder is None  # no software encoder started behind our back


async def test_selftest_flags_a_pi5_running_the_pi4_profile(
    picamera2_pi5: type[standin.Picamera2],
) -> None:
    report = await run_selftest(load_profile("rpi4"), None, label="pi", timeout=5)
    camera = report.part("camera")
    assert not camera.ok
    assert "rpi5" in camera.detail


async def test_selftest_reads_a_hardware_packet(picamera2: type[standin.Picamera2]) -> None:
    report = await run_selftest(load_profile("rpi4"), None, label="pi", timeout=5)
    camera = report.part("camera")
    assert camera.ok, camera.detail
    assert "H.264 packet" in camera.detail


def test_missing_picamera2_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(BoardError, match="python3-picamera2"):
        open_camera(SPEC, label="pi")


def test_camera_device_must_be_a_number(picamera2: type[standin.Picamera2]) -> None:
    with pytest.raises(BoardError, match="must be a number"):
        PiCamera(CameraSpec("picamera2", "/dev/video0", 320, 240, 30))


async def test_read_before_start_is_an_error(picamera2: type[standin.Picamera2]) -> None:
    camera = open_camera(SPEC, label="pi")
    with pytest.raises(BoardError, match="not started"):
        await camera.read()


def test_i420_keeps_tight_buffers_as_they_are() -> None:
    tight = np.zeros((360, 320), dtype=np.uint8)
    assert i420(tight, 320, 240) is tight


async def test_the_hardware_path_still_gives_the_self_view_a_few_pictures(
    picamera2: type[standin.Picamera2],
) -> None:
    from tiepdan.firmware.call.encoder import CameraEncoder

    encoder = CameraEncoder(open_camera(SPEC, label="pi"), bitrate=1_000_000,
                            keyframe_interval=2.0)
    packets = encoder.video.subscribe("call")
    task = asyncio.ensure_future(encoder.run())
    try:
        assert await asyncio.wait_for(packets.get(), 10) is not None
        assert encoder.frames.published == 0, "raw pictures read while nobody looks"
        view = encoder.frames.subscribe("screen", capacity=4)
        frame = await asyncio.wait_for(view.get(), 10)
        assert frame is not None and (frame.width, frame.height) == (320, 240)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_adaptive_bitrate_reaches_the_hardware_encoders_device(
        picamera2: type[standin.Picamera2], caplog: pytest.LogCaptureFixture) -> None:
    """The call's target goes to the encoder's V4L2 device (VIDIOC_S_CTRL); the stand-in's
    device is no V4L2 device, so the control is refused: logged, and the stream goes on."""
    from tiepdan.firmware.call.encoder import CameraEncoder
    from tiepdan.firmware.media.bitrate import BitrateController, ladder

    camera = open_camera(SPEC, label="pi")
    assert camera.set_bitrate(300_000) is False  # not started: no device yet
    control = BitrateController(ladder(320, 240, 30, floor=100_000, ceiling=800_000),
                                floor=100_000, ceiling=800_000)
    encoder = CameraEncoder(camera, bitrate=800_000, keyframe_interval=2.0, control=control)
    packets = encoder.video.subscribe("test", capacity=100)
    running = asyncio.ensure_future(encoder.run())
    try:
        assert await asyncio.wait_for(packets.get(), 10) is not None
        control.on_remb(250_000)
        for _ in range(3):  # still flowing after the refused control
            assert await asyncio.wait_for(packets.get(), 10) is not None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        packets.close()
    refused = [r.getMessage() for r in caplog.records if "camera_bitrate_refused" in r.message]
    assert any("bitrate=250000" in line for line in refused), refused
    assert encoder.sending()[3] == 800_000  # telemetry keeps the rate the encoder took
