"""Raspberry Pi cameras (CSI, e.g. Camera Module 3) through picamera2 and libcamera.

On a Pi 4 or CM4 the VideoCore's H.264 encoder runs beside the raw stream: `read` gives frames
for preview or software encoding, `read_encoded` gives encoder output at no CPU cost. picamera2
only installs on Raspberry Pi OS, so it is imported when a camera is built, not at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
from types import ModuleType
from typing import Any

import av
import numpy as np
from av.stream import Stream

from tiepdan.board.camera import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, Camera
from tiepdan.board.camera.tag import Plane
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import CameraSpec

__all__ = ["PiCamera", "i420"]

log = logging.getLogger(__name__)

# ~2 Mbit/s at 720p30, scaled by pixel rate: enough for a talking-head picture, and small
# enough for a commune's shared uplink.
BITRATE_720P30 = 2_000_000
KEYFRAME_SECONDS = 2
# Encoded packets waiting for a slow reader; past this we drop up to the next keyframe,
# because a decoder cannot skip single H.264 frames.
MAX_QUEUED_PACKETS = 60
# <linux/videodev2.h>: VIDIOC_S_CTRL = _IOWR('V', 28, struct v4l2_control {u32 id; s32 value});
# the bcm2835 codec takes a new V4L2_CID_MPEG_VIDEO_BITRATE while streaming. picamera2 sets it
# only at start, so the call's adaptive bitrate goes to the encoder's device file directly.
VIDIOC_S_CTRL = 0xC008561C
V4L2_CID_MPEG_VIDEO_BITRATE = 0x009909CF


def i420(array: Plane, width: int, height: int) -> Plane:
    """picamera2's YUV420 buffer (rows padded to a stride) as a tight (h*3/2, w) I420 array."""
    stride = array.shape[1]
    if stride == width:
        return array
    flat = array.reshape(-1)
    y_size, c_stride = height * stride, stride // 2
    c_size = (height // 2) * c_stride
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    out[:height] = flat[:y_size].reshape(height, stride)[:, :width]
    chroma = out[height:].reshape(-1)
    quarter = (height // 2) * (width // 2)
    for i in range(2):
        plane = flat[y_size + i * c_size : y_size + (i + 1) * c_size].reshape(height // 2, c_stride)
        chroma[i * quarter : (i + 1) * quarter] = plane[:, : width // 2].reshape(-1)
    return out


def _to_clock(delta: int, units_per_second: int) -> int:
    """A sensor time difference on the 90 kHz clock, rounded in integers (no float drift)."""
    return (delta * VIDEO_CLOCK_RATE + units_per_second // 2) // units_per_second


def _import_picamera2() -> tuple[ModuleType, ModuleType, ModuleType]:
    try:
        import picamera2
        import picamera2.encoders
        import picamera2.outputs
    except ImportError as exc:
        raise BoardError(
            "the Pi camera needs picamera2: install python3-picamera2 "
            "(sudo apt install python3-picamera2) and create the venv with --system-site-packages"
        ) from exc
    return picamera2, picamera2.encoders, picamera2.outputs


class PiCamera(Camera):
    def __init__(self, spec: CameraSpec) -> None:
        super().__init__(spec)
        self._picamera2, self._encoders, self._outputs = _import_picamera2()
        try:
            self._camera_num = int(spec.device)
        except ValueError:
            raise BoardError(
                f"picamera2 camera device must be a number, got {spec.device!r}"
            ) from None
        # picamera2 aliases H264Encoder to its libav (software) encoder where the V4L2 hardware
        # encoder is missing, as on a Pi 5; only the real one is worth sharing.
        software = getattr(self._encoders, "LibavH264Encoder", None)
        self.hardware_encoder = self._encoders.H264Encoder is not software
        self._camera: Any = None
        self._encoder: Any = None
        self._packets: asyncio.Queue[av.Packet[Stream]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frame_t0: int | None = None
        self._encoded_t0: int | None = None
        self._await_keyframe = False

    async def start(self) -> None:
        if self._camera is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._open)
        except BoardError:
            raise
        except Exception as exc:  # libcamera reports every fault as RuntimeError or worse
            raise BoardError(f"cannot start Pi camera {self._camera_num}: {exc}") from exc
        log.info(
            "camera_started backend=picamera2 camera=%d size=%dx%d fps=%d hardware_encoder=%s",
            self._camera_num,
            self.width,
            self.height,
            self.fps,
            self.hardware_encoder,
        )

    def _open(self) -> None:
        camera = self._picamera2.Picamera2(self._camera_num)
        try:
            config = camera.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                controls={"FrameRate": self.fps},
            )
            camera.configure(config)
            if self.hardware_encoder:
                pixel_rate = self.width * self.height * self.fps
                self._encoder = self._encoders.H264Encoder(
                    bitrate=int(BITRATE_720P30 * pixel_rate / (1280 * 720 * 30)),
                    repeat=True,  # SPS/PPS before every keyframe, so late joiners can decode
                    iperiod=self.fps * KEYFRAME_SECONDS,
                )
                camera.start_encoder(self._encoder, self._packet_output())
            camera.start()
        except Exception:
            camera.close()
            raise
        self._camera = camera

    def _packet_output(self) -> Any:
        camera = self
        base: Any = self._outputs.Output

        class PacketOutput(base):  # type: ignore[misc]
            """Receives encoder output on picamera2's encoder thread."""

            def outputframe(
                self,
                frame: bytes,
                keyframe: bool = True,
                timestamp: int | None = None,
                packet: Any = None,
                audio: bool = False,
            ) -> None:
                if not audio:
                    camera._encoded(bytes(frame), keyframe, timestamp)

        return PacketOutput()

    def _encoded(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        packet = av.Packet(data)
        if timestamp_us is not None:
            if self._encoded_t0 is None:
                self._encoded_t0 = timestamp_us
            packet.pts = _to_clock(timestamp_us - self._encoded_t0, 1_000_000)
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = keyframe
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed while the encoder still runs
            self._loop.call_soon_threadsafe(self._queue_packet, packet)

    def _queue_packet(self, packet: av.Packet[Stream]) -> None:
        if self._packets.qsize() >= MAX_QUEUED_PACKETS:
            log.warning("camera_encoded_overflow dropped=%d", self._packets.qsize())
            while not self._packets.empty():
                self._packets.get_nowait()
            self._await_keyframe = True
        if self._await_keyframe and not packet.is_keyframe:
            return
        self._await_keyframe = False
        self._packets.put_nowait(packet)

    async def stop(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return

        def close() -> None:
            try:
                camera.stop()
                if self._encoder is not None:
                    camera.stop_encoder()
            finally:
                camera.close()

        await asyncio.to_thread(close)
        self._encoder = None
        log.info("camera_stopped backend=picamera2 camera=%d", self._camera_num)

    async def read(self) -> av.VideoFrame:
        camera = self._camera
        if camera is None:
            raise BoardError("camera is not started")
        array, timestamp_ns = await asyncio.to_thread(self._capture, camera)
        frame = av.VideoFrame.from_ndarray(i420(array, self.width, self.height), format="yuv420p")
        if self._frame_t0 is None:
            self._frame_t0 = timestamp_ns
        frame.pts = _to_clock(timestamp_ns - self._frame_t0, 1_000_000_000)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    @staticmethod
    def _capture(camera: Any) -> tuple[Plane, int]:
        # Blocks until the sensor delivers the next frame, which paces the caller at fps.
        request = camera.capture_request()
        try:
            array = request.make_array("main")
            timestamp_ns = int(request.get_metadata()["SensorTimestamp"])
        finally:
            request.release()
        return array, timestamp_ns

    def set_bitrate(self, bitrate: int) -> bool:
        device = getattr(self._encoder, "vd", None)
        if device is None or getattr(device, "closed", True):
            return False
        return set_encoder_bitrate(device, bitrate)

    async def read_encoded(self) -> av.Packet[Stream]:
        if not self.hardware_encoder:
            raise NotImplementedError("this Pi has no hardware H.264 encoder (Pi 5?)")
        if self._camera is None:
            raise BoardError("camera is not started")
        return await self._packets.get()


def set_encoder_bitrate(device: Any, bitrate: int) -> bool:
    """VIDIOC_S_CTRL(V4L2_CID_MPEG_VIDEO_BITRATE) on an open V4L2 encoder; False if refused."""
    try:
        fcntl.ioctl(device, VIDIOC_S_CTRL, struct.pack("=Ii", V4L2_CID_MPEG_VIDEO_BITRATE,
                                                       int(bitrate)))
    except OSError as exc:
        log.warning("camera_bitrate_refused bitrate=%d error=%s", bitrate, exc)
        return False
    return True
