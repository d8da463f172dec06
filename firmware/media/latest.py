"""Newest wins: received media that cannot be handled in time is dropped, never queued.

aiortc's receiver hands every complete encoded frame to a decoder thread through an unbounded
queue, and every decoded frame to the track through another. When the CPU is short (a busy
bridge, a Pi recording and decoding at once) both grow without limit and the picture arrives
seconds late. Two bounds, on the box and on the bridge alike:

- `bound_decoder(pc)`: when more than `MAX_BACKLOG` encoded video frames wait for the decoder,
  the backlog is thrown away and frames are skipped up to the next key frame (decoding from
  anything else shows garbage); the receiver then asks the sender for one (PLI), as it does
  after a decode error. Audio keeps its newest `MAX_AUDIO_BACKLOG` packets.
- `bound_decoder(pc)` also bounds aiortc's video jitter buffer by time: it holds up to 512
  packets waiting for a lost one (seconds of video at a box's bitrate) before giving up. A
  gap older than `MAX_GAP_S` is skipped with the frame after it and a PLI asks for a key frame;
  decoding goes on meanwhile (concealed) rather than freeze the picture.
- `bound_decoder(pc)` also drops a video frame timed before one already received: a late
  retransmission that aiortc's jitter buffer takes for a sender restart (a packet more than 100
  behind its head resets it) would otherwise be decoded and shown seconds late, after newer
  pictures, by a receiver short of CPU. Newest wins by the picture's own time, not by arrival.
- `latest_frames(track)`: iterates a track's decoded frames skipping all but the newest
  waiting one, so a consumer slower than the sender sees fewer frames, not older ones.
- `bound_socket_age(pc)`: an event loop short of CPU reads its UDP sockets late and the
  kernel's receive buffers (hundreds of kB: seconds of video) become the queue. Each datagram
  carries its kernel arrival time (SO_TIMESTAMPNS); an RTP media packet that waited longer
  than `MAX_SOCKET_AGE_S` while newer ones wait behind it is dropped unread (the newest is
  always handled, so a slow loop still shows pictures). STUN, DTLS and RTCP always pass (they
  keep the connection alive and carry the loss reports that make the sender send a key frame).
"""

from __future__ import annotations

import fcntl
import logging
import queue
import socket
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

MAX_BACKLOG = 3  # encoded video frames (200 ms at 15 fps) waiting for the decoder
MAX_AUDIO_BACKLOG = 10  # 20 ms Opus packets
MAX_GAP_S = 0.2  # a lost video packet (NACK round trips included) waited for this long at most
MAX_SOCKET_AGE_S = 0.25  # an RTP packet older than this in the kernel's buffer is dropped
VIDEO_CLOCK = 90_000  # RTP timestamp units a second, H.264 and VP8
# A frame timed up to this much before the newest received is stale; further back, the sender
# restarted its clock (a new encoder or a switched stream) and the frame is the new newest.
STALE_WINDOW = 60 * VIDEO_CLOCK
_QUEUE = "_RTCRtpReceiver__decoder_queue"
_JITTER = "_RTCRtpReceiver__jitter_buffer"
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


EncodedTap = Callable[[str, bytes, int], None]  # (codec name, access unit, 90 kHz timestamp)


class DroppingQueue(queue.Queue[Any]):
    """The decoder's input: bounded, and resynchronising at a key frame after a drop.

    `tap`, if set, sees every complete encoded frame first, dropped or not: the box records
    the composed picture as it arrives, without decoding or re-encoding it.
    """

    def __init__(self, kind: str, decode_error: threading.Event | None,
                 tap: EncodedTap | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.tap = tap
        self.limit = MAX_BACKLOG if kind == "video" else MAX_AUDIO_BACKLOG
        self.dropped = 0
        self._decode_error = decode_error
        # Video starts at a key frame: what comes before it would only decode to garbage.
        self._resyncing = kind == "video"
        self._asked = False
        self.stale = 0
        self._newest: int | None = None  # RTP timestamp of the newest video frame received

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver stopping: always delivered
            super().put(item, block, timeout)
            return
        codec, frame = item
        if self.kind == "video" and self._behind(int(frame.timestamp)):
            self.stale += 1
            log.warning("receiver_stale_frame_dropped kind=video behind_ms=%d stale=%d",
                        ((self._newest or 0) - int(frame.timestamp)) % 2**32 * 1000 // VIDEO_CLOCK,
                        self.stale)
            return
        if self.tap is not None and self.kind == "video":
            self.tap(str(getattr(codec, "name", "")), bytes(frame.data), int(frame.timestamp))
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

    def _behind(self, timestamp: int) -> bool:
        """Whether a frame is timed before the newest one received (and becomes it if not)."""
        newest = self._newest
        if newest is not None and 0 < (newest - timestamp) % 2**32 <= STALE_WINDOW:
            return True
        self._newest = timestamp
        return False

    def _drain(self, keep: int = 0) -> None:
        with self.mutex:
            while len(self.queue) > keep:
                if self.queue[0] is None:
                    break
                self.queue.popleft()
                self.dropped += 1


    def request_key(self) -> None:
        """Have the receiver ask the sender for a key frame (a PLI with its next packet)."""
        if self._decode_error is not None:
            self._decode_error.set()


def bound_decoder(pc: RTCPeerConnection, tap: EncodedTap | None = None) -> DroppingQueue | None:
    """Bound the decoder backlog of every receiver of `pc` (call before it connects); returns
    the video receiver's queue, which `tap` (if given) watches."""
    video = None
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        current = getattr(receiver, _QUEUE, None)
        if isinstance(current, DroppingQueue) or current is None:
            continue
        bounded = DroppingQueue(transceiver.kind, getattr(receiver, _ERROR, None),
                                tap if transceiver.kind == "video" else None)
        setattr(receiver, _QUEUE, bounded)
        if transceiver.kind == "video":
            video = bounded
            jitter = getattr(receiver, _JITTER, None)
            if jitter is not None and hasattr(jitter, "add"):
                jitter.add = _gap_bounded(jitter)
    return video


def _gap_bounded(jitter: Any) -> Any:
    """The jitter buffer's `add`, giving up on a lost packet after MAX_GAP_S without a frame."""
    original = jitter.add
    progress: list[float | None] = [None]  # when the buffer last gave out a frame

    def add(packet: Any) -> tuple[bool, Any]:
        pli, frame = original(packet)
        now = time.monotonic()
        if frame is not None or progress[0] is None or jitter._origin is None:
            progress[0] = now
            return pli, frame
        if now - progress[0] < MAX_GAP_S or not _has_hole(jitter, packet.sequence_number):
            return pli, frame  # in time, or a large frame still arriving whole
        progress[0] = now
        _skip_gap(jitter, packet.sequence_number)
        # Decoding goes on (concealed until the key frame the PLI brings): waiting for a key
        # frame instead would freeze the picture whenever key frames are the ones lost.
        log.warning("jitter_gap_skipped after_s=%.2f", MAX_GAP_S)
        return True, jitter._remove_frame(packet.sequence_number)

    return add


def _has_hole(jitter: Any, newest: int) -> bool:
    span = (newest - jitter._origin) & 0xFFFF
    if span >= jitter._capacity:
        return False
    return any(jitter._packets[(jitter._origin + i) % jitter._capacity] is None
               for i in range(span + 1))


def _skip_gap(jitter: Any, newest: int) -> None:
    """Move the buffer's head past the incomplete frame, the missing packets and the frame
    after them (it may lack its start), never past the newest packet received."""
    capacity = jitter._capacity
    packets = jitter._packets

    def head() -> Any:
        return packets[jitter._origin % capacity]

    def advance() -> bool:
        if jitter._origin == (newest + 1) & 0xFFFF:
            return False
        packets[jitter._origin % capacity] = None
        jitter._origin = (jitter._origin + 1) & 0xFFFF
        return True

    while head() is not None:  # the frame the hole is in
        if not advance():
            return
    while head() is None:  # the hole
        if not advance():
            return
    timestamp = head().timestamp
    while head() is None or head().timestamp == timestamp:  # the frame after it
        if not advance():
            return


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


def is_rtp_media(data: bytes) -> bool:
    """RTP (not RTCP, STUN or DTLS) by RFC 7983's first byte and RFC 5761's payload types."""
    return len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223


class SocketAge:
    """Counts what `bound_socket_age` dropped, per peer connection."""

    def __init__(self) -> None:
        self.dropped = 0


def bound_socket_age(pc: RTCPeerConnection) -> SocketAge:
    """Drop stale RTP media in the kernel's buffers of `pc`'s host sockets (call once its
    candidates are gathered: after setLocalDescription)."""
    counter = SocketAge()
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        for protocol in getattr(connection, "_protocols", []):
            transport = getattr(protocol, "transport", None)
            sock = getattr(transport, "_sock", None)
            if transport is None or not isinstance(sock, socket.socket) or \
                    id(transport) in seen or not hasattr(transport, "_read_ready"):
                continue
            seen.add(id(transport))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                continue
            reader = _newest_reader(transport, sock, counter)
            transport._read_ready = reader  # for resume_reading
            transport._loop._add_reader(transport._sock_fd, reader)  # replaces the old one
    return counter


_TIMESPEC = struct.Struct("@ll")
# Linux's SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD on every architecture a box or server runs),
# which Python's socket module does not name; the control message has the same number.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _pending(sock: socket.socket) -> bool:
    """Whether another datagram waits behind this one (FIONREAD: the next one's size)."""
    try:
        size: int = struct.unpack("@i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                     b"\0\0\0\0"))[0]
        return size > 0
    except OSError:
        return False


def _newest_reader(transport: Any, sock: socket.socket, counter: SocketAge) -> Any:
    """asyncio's datagram `_read_ready`, with recvmsg and the stale-RTP drop."""
    protocol = transport._protocol
    size = transport.max_size

    def read_ready() -> None:
        if transport._conn_lost:
            return
        try:
            data, ancillary, _, addr = sock.recvmsg(size, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            protocol.error_received(exc)
            return
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                    len(value) >= _TIMESPEC.size and is_rtp_media(data):
                seconds, nanos = _TIMESPEC.unpack_from(value)
                if time.time() - (seconds + nanos / 1e9) > MAX_SOCKET_AGE_S and \
                        _pending(sock):
                    counter.dropped += 1
                    if counter.dropped % 500 == 1:
                        log.warning("socket_backlog_dropped dropped=%d", counter.dropped)
                    return
        protocol.datagram_received(data, addr)

    return read_ready
