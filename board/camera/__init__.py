"""The camera seam: one interface, with picamera2, V4L2 (PyAV) and synthetic backends.

Frames follow aiortc's conventions (pts on a 90 kHz clock), so a camera plugs straight into a
`MediaStreamTrack`. A camera that can also hand out encoder output (`hardware_encoder`) lets
the call and the recorder share one encoded stream instead of encoding twice.
"""

from __future__ import annotations

import abc
import logging
from fractions import Fraction

import av
from av.stream import Stream

from tiepdan.board.device import MediaDevice
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import CameraSpec

__all__ = ["VIDEO_CLOCK_RATE", "VIDEO_TIME_BASE", "Camera", "open_camera"]

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


class Camera(MediaDevice):
    """A started camera yields yuv420p frames at about `fps`; `read` never blocks the loop."""

    hardware_encoder: bool = False

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.width = spec.width
        self.height = spec.height
        self.fps = spec.fps

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def read(self) -> av.VideoFrame:
        """The next frame, with `pts` in `VIDEO_TIME_BASE` units."""

    async def read_encoded(self) -> av.Packet[Stream]:
        """The next H.264 access unit from the board's encoder (only if `hardware_encoder`)."""
        raise NotImplementedError(f"{type(self).__name__} has no hardware encoder")

    def set_bitrate(self, bitrate: int) -> bool:
        """Ask the board's encoder for `bitrate` bit/s from now on (adaptive bitrate on a poor
        link); False where there is no hardware encoder or it refused."""
        return False


def open_camera(spec: CameraSpec, *, label: str) -> Camera:
    """Build (not start) the camera a profile asks for; `label` names the point on screen."""
    camera: Camera
    if spec.backend == "synthetic":
        from tiepdan.board.camera.synthetic import SyntheticCamera

        camera = SyntheticCamera(spec, label=label)
    elif spec.backend == "v4l2":
        from tiepdan.board.camera.v4l2 import V4l2Camera

        camera = V4l2Camera(spec)
    elif spec.backend == "picamera2":
        from tiepdan.board.camera.pi import PiCamera

        camera = PiCamera(spec)
    else:
        raise BoardError(f"unknown camera backend {spec.backend!r}")
    log.info(
        "camera_open backend=%s device=%s size=%dx%d fps=%d hardware_encoder=%s",
        spec.backend,
        spec.device,
        spec.width,
        spec.height,
        spec.fps,
        camera.hardware_encoder,
    )
    return camera
