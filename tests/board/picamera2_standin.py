"""A stand-in for picamera2 with the real API's shape, for hosts without libcamera.

It produces YUV420 buffers padded to a stride, as libcamera does, and (with the hardware
encoder) real H.264 from libx264 through an `Output.outputframe` callback on its own thread,
as picamera2's V4L2 encoder does. Checked against picamera2's sources: Picamera2(camera_num),
create_video_configuration(main=..., controls=...), configure, start_encoder(encoder, output),
start, capture_request() -> request.make_array / get_metadata / release, stop, stop_encoder,
close; encoders.H264Encoder(bitrate, repeat, iperiod); outputs.Output.outputframe(frame,
keyframe, timestamp, packet, audio).
"""

from __future__ import annotations

import threading
import time
import types
from fractions import Fraction
from typing import Any

import av
import numpy as np

STRIDE_PAD = 64  # libcamera pads rows; 320 px rows become 384 bytes
U_VALUE, V_VALUE = 64, 192


class Output:
    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass


class H264Encoder:
    """The VideoCore encoder's class."""

    def __init__(
        self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = None
    ) -> None:
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.vd: Any = None


class LibavH264Encoder(H264Encoder):
    """picamera2's software encoder, which it names H264Encoder on a Pi 5."""


class Request:
    def __init__(self, array: np.ndarray, timestamp_ns: int) -> None:
        self._array = array
        self._timestamp_ns = timestamp_ns
        self.released = False

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main"
        return self._array

    def get_metadata(self) -> dict[str, Any]:
        return {"SensorTimestamp": self._timestamp_ns}

    def release(self) -> None:
        self.released = True


class Picamera2:
    instances: list[Picamera2] = []
    frame_interval: float | None = None  # default 1/FrameRate; tests may run it faster

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.config: dict[str, Any] | None = None
        self.encoder: H264Encoder | None = None
        self.output: Output | None = None
        self.encoded = 0
        self.closed = False
        self._cond = threading.Condition()
        self._latest: tuple[int, np.ndarray, int] | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        Picamera2.instances.append(self)

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {"main": dict(main or {}), "controls": dict(controls or {})}

    def configure(self, config: dict[str, Any]) -> None:
        assert config["main"]["format"] == "YUV420"
        self.config = config

    def start_encoder(self, encoder: H264Encoder, output: Output, name: str = "main") -> None:
        assert self.config is not None and not self._running
        self.encoder, self.output = encoder, output
        # picamera2's V4L2Encoder opens /dev/video11 here as `vd`; a host has none, and what
        # stands in is a file that is no V4L2 device (its controls are refused, as a driver
        # refuses one it does not know).
        encoder.vd = open("/dev/null", "rb+", buffering=0)  # noqa: SIM115 - closed on stop
        output.start()

    def start(self) -> None:
        assert self.config is not None
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.config is not None
        width, height = self.config["main"]["size"]
        fps = self.config["controls"]["FrameRate"]
        interval = self.frame_interval or 1 / fps
        encoder = None
        if self.encoder is not None:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base = Fraction(1, 1_000_000)
            encoder.gop_size = self.encoder.iperiod or 60
            encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0"}
        base_ns = 5_000_000_000
        index = 0
        while self._running:
            time.sleep(interval)
            timestamp_ns = base_ns + round(index * 1e9 / fps)
            array = self._buffer(width, height, index)
            with self._cond:
                self._latest = (index, array, timestamp_ns)
                self._cond.notify_all()
            if encoder is not None and self.output is not None:
                tight = np.concatenate([array[:height, :width], self._chroma(array, width, height)])
                frame = av.VideoFrame.from_ndarray(tight, format="yuv420p")
                frame.pts = timestamp_ns // 1000
                for packet in encoder.encode(frame):
                    self.output.outputframe(bytes(packet), packet.is_keyframe, packet.pts)
                    with self._cond:
                        self.encoded += 1
                        self._cond.notify_all()
            index += 1

    @staticmethod
    def _buffer(width: int, height: int, index: int) -> np.ndarray:
        """A YUV420 buffer as libcamera lays it out: rows padded to the stride with junk."""
        stride = width + STRIDE_PAD
        rows = np.arange(height)[:, None]
        cols = np.arange(stride)[None, :]
        y = ((rows + cols + index) % 256).astype(np.uint8)
        y[:, width:] = 255
        chroma_rows = np.zeros((height // 2, stride // 2), dtype=np.uint8)
        u, v = chroma_rows.copy(), chroma_rows.copy()
        u[:, : width // 2], v[:, : width // 2] = U_VALUE, V_VALUE
        return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, stride)

    @staticmethod
    def _chroma(array: np.ndarray, width: int, height: int) -> np.ndarray:
        stride = array.shape[1]
        flat = array.reshape(-1)[height * stride :]
        half = (height // 2) * (stride // 2)
        planes = [
            flat[i * half : (i + 1) * half].reshape(height // 2, stride // 2)[:, : width // 2]
            for i in range(2)
        ]
        return np.concatenate([p.reshape(-1) for p in planes]).reshape(-1, width)

    def wait_encoded(self, count: int, timeout: float) -> bool:
        """Block until the encoder has put out `count` packets (for tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.encoded >= count, timeout=timeout)

    def capture_request(self) -> Request:
        with self._cond:
            seen = self._latest[0] if self._latest else -1
            assert self._cond.wait_for(
                lambda: self._latest is not None and self._latest[0] != seen, timeout=5
            )
            assert self._latest is not None
            _, array, timestamp_ns = self._latest
        return Request(array, timestamp_ns)

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join()

    def stop_encoder(self, encoders: Any = None) -> None:
        if self.output is not None:
            self.output.stop()
        if self.encoder is not None and self.encoder.vd is not None:
            self.encoder.vd.close()

    def close(self) -> None:
        self.closed = True


def modules(*, hardware_encoder: bool) -> dict[str, types.ModuleType]:
    """sys.modules entries for `picamera2`, `picamera2.encoders` and `picamera2.outputs`."""
    root = types.ModuleType("picamera2")
    encoders = types.ModuleType("picamera2.encoders")
    outputs = types.ModuleType("picamera2.outputs")
    root.Picamera2 = Picamera2  # type: ignore[attr-defined]
    root.encoders = encoders  # type: ignore[attr-defined]
    root.outputs = outputs  # type: ignore[attr-defined]
    encoders.LibavH264Encoder = LibavH264Encoder  # type: ignore[attr-defined]
    encoders.H264Encoder = H264Encoder if hardware_encoder else LibavH264Encoder  # type: ignore[attr-defined]
    outputs.Output = Output  # type: ignore[attr-defined]
    Picamera2.instances = []
    Picamera2.frame_interval = None
    return {"picamera2": root, "picamera2.encoders": encoders, "picamera2.outputs": outputs}
