"""The box's camera, encoded once into a `Fanout[av.Packet]` that the call and the recorder share.

On a Pi 4 or CM4 the VideoCore encoder does the work (`camera.hardware_encoder`: picamera2
hands out H.264 access units); elsewhere libx264 through PyAV
(`tiepdan.firmware.media.h264`). Either way there is one encoder per box, whatever listens: a
second consumer costs a queue, not an encode. The camera runs only while the box is in a session.
"""

from __future__ import annotations

import asyncio
import logging

import av
from av.stream import Stream

from tiepdan.board.camera import Camera
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import H264Encoder

log = logging.getLogger(__name__)

PREVIEW_FPS = 5.0  # raw pictures for the hall's self-view when the encoder needs none


class CameraEncoder:
    def __init__(self, camera: Camera, *, bitrate: int, keyframe_interval: float,
                 frames: Fanout[av.VideoFrame] | None = None) -> None:
        self.camera = camera
        # The raw pictures too (the hall's self-view); publishing to nobody costs nothing.
        self.frames: Fanout[av.VideoFrame] = frames or Fanout("camera-frames")
        self._bitrate = bitrate
        self._keyframe_interval = keyframe_interval
        self._encoder: H264Encoder | None = None
        self.video: Fanout[av.Packet[Stream]] = Fanout(
            "camera-h264", is_key=lambda p: bool(p.is_keyframe), on_key_request=self.request_key)

    def request_key(self) -> None:
        """A new subscriber, a lagging one or a receiver's PLI wants a key frame now.

        The hardware encoder (picamera2) has no such request; its I-period (2 s, see
        `board.camera.pi`) bounds the wait instead.
        """
        if self._encoder is not None:
            self._encoder.request_key()

    async def _preview(self) -> None:
        """With the hardware encoder nobody needs the raw pictures to encode, so the self-view
        gets a few a second (`PREVIEW_FPS`), and only while somebody subscribes."""
        while True:
            if self.frames.subscribers:
                self.frames.publish(await self.camera.read())
            await asyncio.sleep(1 / PREVIEW_FPS)

    async def run(self) -> None:
        """Encode until cancelled; the camera is started here and stopped on the way out."""
        camera = self.camera
        await camera.start()
        log.info("encoder_start hardware=%s size=%dx%d fps=%d", camera.hardware_encoder,
                 camera.width, camera.height, camera.fps)
        try:
            if camera.hardware_encoder:
                preview = asyncio.ensure_future(self._preview())
                try:
                    while True:
                        self.video.publish(await camera.read_encoded())
                finally:
                    preview.cancel()
                    await asyncio.gather(preview, return_exceptions=True)
            else:
                self._encoder = H264Encoder(camera.width, camera.height, camera.fps,
                                            self._bitrate,
                                            keyframe_interval=self._keyframe_interval)
                loop = asyncio.get_running_loop()
                while True:
                    frame = await camera.read()
                    self.frames.publish(frame)
                    for packet in await loop.run_in_executor(None, self._encoder.encode, frame):
                        self.video.publish(packet)
        finally:
            self._encoder = None
            await camera.stop()
            log.info("encoder_stop")
