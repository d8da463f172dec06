"""H.264 for live WebRTC, encoded once: libx264 through PyAV, shared by the box and the bridge.

aiortc's own encoder lives inside each `RTCRtpSender`, so every receiver costs an encode. Here
the encoder sits outside: its packets go into a `Fanout` and each sender only packetizes them
(`aiortc.codecs.h264.H264Encoder.pack`). The settings are what WebRTC receivers expect of a
pre-encoded stream: constrained baseline (aiortc offers profile-level-id 42e01f), no B-frames
or lookahead (tune zerolatency), SPS/PPS repeated before every IDR so a late joiner can start
at any key frame, and an IDR on demand (`request_key`), because a receiver's PLI cannot reach
an encoder that is not its sender's own. The bitrate follows the link at run time
(`set_bitrate`, adaptive bitrate): libx264 takes a new ABR target between frames; the VBV cap
(`max_bitrate`, set when the encoder opens) bounds the bursts.
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction

import av
from av.stream import Stream
from av.video.frame import PictureType

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
# A burst of PLIs (N receivers losing the same packet) must cost one IDR, not N.
MIN_KEY_SPACING_S = 0.5


class H264Encoder:
    """Encodes yuv420p frames; `encode` may run in a worker thread (libx264 drops the GIL)."""

    def __init__(self, width: int, height: int, fps: int, bitrate: int, *,
                 keyframe_interval: float = 4.0, preset: str = "superfast",
                 threads: int = 0, min_key_spacing: float = MIN_KEY_SPACING_S,
                 max_bitrate: int | None = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._context = av.CodecContext.create("libx264", "w")
        ctx = self._context
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(fps, 1)
        ctx.bit_rate = bitrate
        ctx.thread_count = threads
        self.bitrate = bitrate
        self.max_bitrate = max(bitrate, max_bitrate or bitrate)
        keyint = max(1, round(keyframe_interval * fps))
        # The VBV goes through the codec context (maxrate/bufsize), not x264-params: libavcodec
        # re-applies the context's values to x264 on every frame, which is what lets a new
        # `bit_rate` take effect mid-stream and would undo a VBV given only to x264.
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "forced-idr": "1",
            "maxrate": str(self.max_bitrate),
            "bufsize": str(max(1000, self.max_bitrate // 2)),
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        ctx.profile = "Baseline"
        self._lock = threading.Lock()
        self._force_key = True
        self._min_key_spacing = min_key_spacing  # 0 for a recorder's own encoder: keys at cuts
        self._last_key = 0.0
        self._last_pts = -1
        self.frames = 0
        self.keyframes = 0

    def set_bitrate(self, bitrate: int) -> None:
        """A new average target (bit/s) from the next frame on, capped at `max_bitrate`."""
        bitrate = max(1000, min(int(bitrate), self.max_bitrate))
        if bitrate != self.bitrate:
            with self._lock:
                self._context.bit_rate = self.bitrate = bitrate

    def request_key(self) -> None:
        """Make one of the next frames an IDR (at most one per MIN_KEY_SPACING_S)."""
        self._force_key = True

    def encode(self, frame: av.VideoFrame) -> list[av.Packet[Stream]]:
        """Encode one frame (any size or format: it is converted); returns whole access units."""
        if frame.width != self.width or frame.height != self.height or \
                frame.format.name != "yuv420p":
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        now = time.monotonic()
        key = self._force_key and now - self._last_key >= self._min_key_spacing
        frame.pict_type = PictureType.I if key else PictureType.NONE
        # The source's clock (camera or compositor) drives the RTP timestamps, so skipped
        # frames show as gaps in time rather than as slow motion.
        if frame.pts is None or frame.time_base is None:
            pts = self.frames * 90000 // self.fps
        else:
            pts = int(frame.pts * Fraction(frame.time_base) / VIDEO_TIME_BASE)
        pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        with self._lock:
            packets = list(self._context.encode(frame))
        if key:
            self._force_key = False
        self.frames += 1
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
                self._last_key = now
        return packets
