"""Newest wins: received media that cannot be handled in time is dropped, never queued.

aiortc's receiver hands every complete encoded frame to a decoder thread through an unbounded
queue, and every decoded frame to the track through another. When the CPU is short (a busy
bridge, a Pi recording and decoding at once) both grow without limit and the picture arrives
seconds late. Two bounds, on the box and on the bridge alike:

- `bound_decoder(pc)`: when more than `MAX_BACKLOG` encoded video frames wait for the decoder,
  the backlog is thrown away and frames are skipped up to the next key frame (decoding from
  anything else shows garbage); the receiver then asks the sender for one (PLI), as it does
  after a decode error. Audio keeps its newest `MAX_AUDIO_BACKLOG` packets.
- `latest_frames(track)`: iterates a track's decoded frames skipping all but the newest
  waiting one, so a consumer slower than the sender sees fewer frames, not older ones.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

MAX_BACKLOG = 3  # encoded video frames (200 ms at 15 fps) waiting for the decoder
MAX_AUDIO_BACKLOG = 10  # 20 ms Opus packets
_QUEUE = "_RTCRtpReceiver__decoder_queue"
_ERROR = "_RTCRtpReceiver__decoder_error"


def is_h264_key(data: bytes) -> bool:
    """Whether an Annex B access unit holds an IDR slice or an SPS (a decoder can start here)."""
    index = data.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(data):
        if data[index + 3] & 0x1F in (5, 7):
            return True
        index = data.find(b"\x00\x00\x01", index + 3)
    return False


def _is_key(codec_name: str, data: bytes) -> bool:
    if codec_name == "H264":
        return is_h264_key(data)
    if codec_name == "VP8":
        return bool(data) and not data[0] & 0x01  # the VP8 frame tag's inverse key bit
    return True  # audio: every packet decodes on its own


class DroppingQueue(queue.Queue[Any]):
    """The decoder's input: bounded, and resynchronising at a key frame after a drop."""

    def __init__(self, kind: str, decode_error: threading.Event | None) -> None:
        super().__init__()
        self.kind = kind
        self.limit = MAX_BACKLOG if kind == "video" else MAX_AUDIO_BACKLOG
        self.dropped = 0
        self._decode_error = decode_error
        # Video starts at a key frame: what comes before it would only decode to garbage.
        self._resyncing = kind == "video"
        self._asked = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver stopping: always delivered
            super().put(item, block, timeout)
            return
        codec, frame = item
        if self.kind == "video":
            key = _is_key(str(getattr(codec, "name", "")), bytes(frame.data))
            if self._resyncing and not key:
                if not self._asked and self._decode_error is not None:
                    self._decode_error.set()  # the receiver sends a PLI on its next packet
                    self._asked = True
                self.dropped += 1
                return
            if self.qsize() >= self.limit:
                self._drain()
                if not key:
                    self._resyncing = True
                    self.dropped += 1
                    if self._decode_error is not None:
                        self._decode_error.set()
                        self._asked = True
                    log.warning("receiver_backlog_dropped kind=video dropped=%d", self.dropped)
                    return
            self._resyncing = self._asked = False
        elif self.qsize() >= self.limit:
            self._drain(keep=self.limit // 2)
        super().put(item, block, timeout)

    def _drain(self, keep: int = 0) -> None:
        with self.mutex:
            while len(self.queue) > keep:
                if self.queue[0] is None:
                    break
                self.queue.popleft()
                self.dropped += 1


def bound_decoder(pc: RTCPeerConnection) -> None:
    """Bound the decoder backlog of every receiver of `pc` (call before it connects)."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        current = getattr(receiver, _QUEUE, None)
        if isinstance(current, DroppingQueue) or current is None:
            continue
        setattr(receiver, _QUEUE, DroppingQueue(transceiver.kind,
                                                getattr(receiver, _ERROR, None)))


def dropped(pc: RTCPeerConnection) -> int:
    """Frames the bounded decoder queues of `pc` threw away so far."""
    return sum(q.dropped for t in pc.getTransceivers()
               if isinstance(q := getattr(t.receiver, _QUEUE, None), DroppingQueue))


async def latest_frames(track: MediaStreamTrack) -> AsyncIterator[Any]:
    """The track's frames, skipping any that a newer one has already overtaken."""
    while True:
        frame = await track.recv()
        pending = getattr(track, "_queue", None)
        while pending is not None and not pending.empty():
            newer = pending.get_nowait()
            if newer is None:
                yield frame
                raise MediaStreamError
            frame = newer
        yield frame
