"""The box's camera, encoded once into a `Fanout[av.Packet]` that the call and the recorder share.

On a Pi 4 or CM4 the VideoCore encoder does the work (`camera.hardware_encoder`: picamera2
hands out H.264 access units); elsewhere libx264 through PyAV
(`tiepdan.firmware.media.h264`). Either way there is one encoder per box, whatever listens: a
second consumer costs a queue, not an encode. The camera runs only while the box is in a session.

With adaptive bitrate (`call.adaptive_bitrate`) a `BitrateController`, fed by the call's RTCP
feedback, sets the encoder's target before each frame and picks the rung of the size/frame-rate
ladder: a new rung means a new encoder at that size (its first frame a key frame) and frames
skipped down to the rung's rate. The hardware encoder takes the bitrate only
(`Camera.set_bitrate`); its size is fixed while the camera runs.
"""

from __future__ import annotations

import asyncio
import logging

import av
from av.stream import Stream

from tiepdan.board.camera import Camera
from tiepdan.firmware.media.bitrate import BitrateController, Rung
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import H264Encoder

log = logging.getLogger(__name__)

PREVIEW_FPS = 5.0  # raw pictures for the hall's self-view when the encoder needs none


class CameraEncoder:
    def __init__(self, camera: Camera, *, bitrate: int, keyframe_interval: float,
                 frames: Fanout[av.VideoFrame] | None = None,
                 control: BitrateController | None = None) -> None:
        self.camera = camera
        self.control = control
        # The raw pictures too (the hall's self-view); publishing to nobody costs nothing.
        self.frames: Fanout[av.VideoFrame] = frames or Fanout("camera-frames")
        self._bitrate = bitrate
        self._keyframe_interval = keyframe_interval
        self._encoder: H264Encoder | None = None
        self._rung: Rung | None = None
        self._hardware_bitrate = 0
        self._asked_bitrate = 0
        self.video: Fanout[av.Packet[Stream]] = Fanout(
            "camera-h264", is_key=lambda p: bool(p.is_keyframe), on_key_request=self.request_key)

    def sending(self) -> tuple[int, int, int, int]:
        """Width, height, frame rate and target bitrate of what is encoded now."""
        encoder = self._encoder
        if encoder is not None:
            return encoder.width, encoder.height, encoder.fps, encoder.bitrate
        camera = self.camera
        bitrate = self._hardware_bitrate or self._bitrate
        return camera.width, camera.height, camera.fps, bitrate

    def _software_encoder(self) -> H264Encoder:
        """The encoder for the controller's rung (a new one when the rung changed)."""
        control, camera = self.control, self.camera
        if control is None:
            if self._encoder is None:
                self._encoder = H264Encoder(camera.width, camera.height, camera.fps,
                                            self._bitrate,
                                            keyframe_interval=self._keyframe_interval)
            return self._encoder
        rung = control.rung
        if self._encoder is None or rung != self._rung:
            index = control.rung_index
            cap = control.ceiling if index == 0 else \
                min(control.ceiling, 2 * control.rungs[index - 1].floor)
            self._encoder = H264Encoder(rung.width, rung.height, rung.fps, control.target,
                                        keyframe_interval=self._keyframe_interval,
                                        max_bitrate=cap)
            self._rung = rung
            log.info("encoder_rung size=%dx%d fps=%d target_kbps=%d cap_kbps=%d", rung.width,
                     rung.height, rung.fps, control.target // 1000, cap // 1000)
        self._encoder.set_bitrate(control.target)
        return self._encoder

    def _follow_hardware(self) -> None:
        """Hand a new target to the board's encoder, once per change (a refusal is logged by
        the camera, and the telemetry keeps the last bitrate it took)."""
        control = self.control
        if control is None or control.target == self._asked_bitrate:
            return
        self._asked_bitrate = control.target
        if self.camera.set_bitrate(control.target):
            self._hardware_bitrate = control.target

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
                        self._follow_hardware()
                        self.video.publish(await camera.read_encoded())
                finally:
                    preview.cancel()
                    await asyncio.gather(preview, return_exceptions=True)
            else:
                loop = asyncio.get_running_loop()
                due = 0.0  # frames owed at the rung's rate (frames are skipped below the camera's)
                while True:
                    frame = await camera.read()
                    self.frames.publish(frame)
                    encoder = self._software_encoder()
                    due = min(1.0, due + encoder.fps / camera.fps)
                    if due < 1.0:
                        continue
                    due -= 1.0
                    for packet in await loop.run_in_executor(None, encoder.encode, frame):
                        self.video.publish(packet)
        finally:
            self._encoder, self._rung = None, None
            await camera.stop()
            log.info("encoder_stop")
