"""aiortc pieces that the box's call client and the controller's bridge share.

- `PacketTrack` hands pre-encoded H.264 packets from a `Fanout` to an `RTCRtpSender`, which then
  only packetizes them; `FrameTrack` does the same for raw frames (audio, which the sender
  encodes as Opus itself, cheaply).
- `prefer_h264` pins the video transceiver to H.264, the only codec a pre-encoded stream has.
- `on_keyframe_request` routes a receiver's PLI/FIR to the encoder: aiortc's sender would only
  flag its own (unused) encoder.
- `QosMeter` turns `getStats()` plus frame counters into `protocol.CallQos`.
- `check_sdp` refuses a description aiortc would choke on, with a message a log reader can use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from av.stream import Stream

from tiepdan.firmware import protocol
from tiepdan.firmware.media.fanout import Subscription

log = logging.getLogger(__name__)


# Live media is useless late: a sender's queue holds about half a second of video or 200 ms of
# audio; a sender that falls further behind skips to the next key frame (and asks for one)
# instead of building up delay. The recorder subscribes with its own, larger queue.
LIVE_VIDEO_QUEUE = 8
LIVE_AUDIO_QUEUE = 10
# ... and nothing waits longer than this in a live sender's queue, however slowly the sender
# runs (a starved CPU): newest wins (`Fanout.subscribe(max_age=...)`).
LIVE_MAX_AGE_S = 0.25


class PacketSource(Protocol):
    """Where a `PacketTrack` takes its packets: a `Fanout` subscription, usually."""

    async def get(self) -> av.Packet[Stream] | None: ...
    def close(self) -> None: ...


class PacketTrack(MediaStreamTrack):
    """A video track whose items are already encoded: `recv()` returns `av.Packet`s."""

    kind = "video"

    def __init__(self, source: PacketSource) -> None:
        super().__init__()
        self._source = source
        self.sent = 0

    async def recv(self) -> av.Packet[Stream]:
        packet = await self._source.get()
        if packet is None or self.readyState != "live":
            raise MediaStreamError
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._source.close()


class FrameTrack(MediaStreamTrack):
    """Raw frames from a subscription, for a sender that encodes them itself."""

    def __init__(self, kind: Literal["audio", "video"],
                 source: Subscription[av.AudioFrame] | Subscription[av.VideoFrame]) -> None:
        super().__init__()
        self.kind = kind
        self._source = source
        self.sent = 0

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        frame = await self._source.get()
        if frame is None or self.readyState != "live":
            raise MediaStreamError
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.close()


def peer_connection(ice_servers: list[protocol.IceServer] | None = None) -> RTCPeerConnection:
    """A peer connection that gathers host candidates, plus relayed ones through the TURN
    servers the invitation named.

    Without an explicit configuration aiortc asks a public STUN server, which a box on a
    provincial network cannot reach (each gathering then waits ~5 s for DNS). A box with a
    routable path reaches the bridge's host candidates (the bridge learns it as a
    peer-reflexive candidate); a box behind a NAT or a 4G router reaches it through TURN.
    """
    servers = [RTCIceServer(urls=list(s.urls), username=s.username or None,
                            credential=s.credential or None) for s in ice_servers or []]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def prefer_h264(transceiver: RTCRtpTransceiver) -> None:
    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs
              if c.mimeType in ("video/H264", "video/rtx")]
    transceiver.setCodecPreferences(codecs)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` when the remote receiver asks this sender for a key frame (PLI/FIR).

    aiortc handles PLI by setting a flag for the encoder inside the sender, which a
    pre-encoded stream does not use; replacing that one method is the narrowest hook.
    """
    setattr(sender, "_send_keyframe", callback)  # noqa: B010 - a method, mypy refuses assignment


def check_sdp(sdp: str, kind: Literal["offer", "answer"],
              kinds: tuple[str, ...] | list[str] = ("audio", "video")) -> None:
    """Raise ProtocolError for an SDP without the media (`kinds`), ICE and DTLS a call needs."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the text provokes
        raise protocol.ProtocolError(f"{kind} SDP does not parse: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}") from None
    found = sorted(m.kind for m in description.media)
    if found != sorted(kinds):
        raise protocol.ProtocolError(f"{kind} SDP must have one section each of "
                                     f"{'/'.join(sorted(kinds))}, has {found}")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise protocol.ProtocolError(f"{kind} SDP {media.kind}: no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise protocol.ProtocolError(f"{kind} SDP {media.kind}: no DTLS fingerprint")
        if not media.ice_candidates:
            raise protocol.ProtocolError(f"{kind} SDP {media.kind}: no ICE candidates "
                                         "(half-trickle: gather before sending)")
        if media.kind == "video" and not any(c.name == "H264" for c in media.rtp.codecs):
            raise protocol.ProtocolError(f"{kind} SDP video: H.264 is not offered")


class QosMeter:
    """Call quality over the interval since the previous `measure()`.

    `pc` is the connection that receives the composed picture; `sending`, where a split call
    (an SFU bridge) sends from other connections, the ones whose bytes, loss and round trip
    count as sent (by default `pc` itself).
    """

    def __init__(self, pc: RTCPeerConnection, sent: Callable[[], int],
                 received: Callable[[], int], *,
                 sending: list[RTCPeerConnection] | None = None) -> None:
        self._pc = pc
        self._sending = sending if sending is not None else [pc]
        self._sent = sent
        self._received = received
        self._last: dict[str, float] = {}
        self._at = time.monotonic()

    async def measure(self) -> protocol.CallQos:
        report = await self._pc.getStats()
        reports = [(report, self._pc in self._sending, True)] + [
            (await pc.getStats(), True, False) for pc in self._sending if pc is not self._pc]
        now = time.monotonic()
        totals = {"sent": float(self._sent()), "received": float(self._received()),
                  "bytes_sent": 0.0, "bytes_received": 0.0, "in_packets": 0.0, "in_lost": 0.0}
        rtt: float | None = None
        loss_sent: float | None = None
        jitter: float | None = None
        for stats, sends, receives in ((stats, sends, receives)
                                       for report, sends, receives in reports
                                       for stats in report.values()):
            kind = getattr(stats, "kind", None)
            if stats.type == "transport":
                totals["bytes_sent"] += stats.bytesSent if sends else 0
                totals["bytes_received"] += stats.bytesReceived if receives else 0
            elif stats.type == "remote-inbound-rtp" and kind == "video" and sends:
                if stats.roundTripTime is not None:
                    rtt = stats.roundTripTime * 1000
                loss_sent = min(1.0, stats.fractionLost / 256)
            elif stats.type == "inbound-rtp" and kind == "video" and receives:
                jitter = stats.jitter / 90  # RTP units of the 90 kHz video clock
        received_packets, lost_packets, media_jitter = inbound_video(self._pc)
        totals["in_packets"], totals["in_lost"] = received_packets, lost_packets
        jitter = media_jitter if media_jitter is not None else jitter
        elapsed = max(1e-3, now - self._at)
        delta = {k: v - self._last.get(k, 0.0) for k, v in totals.items()}
        self._last, self._at = totals, now
        expected = delta["in_packets"] + delta["in_lost"]
        return protocol.CallQos(
            fps_sent=round(max(0.0, delta["sent"]) / elapsed, 1),
            fps_received=round(max(0.0, delta["received"]) / elapsed, 1),
            kbps_sent=round(max(0.0, delta["bytes_sent"]) * 8 / 1000 / elapsed, 1),
            kbps_received=round(max(0.0, delta["bytes_received"]) * 8 / 1000 / elapsed, 1),
            rtt_ms=None if rtt is None else round(max(0.0, rtt), 1),
            loss_sent=loss_sent,
            loss_received=round(max(0.0, delta["in_lost"]) / expected, 4) if expected > 0
            else None,
            jitter_ms=None if jitter is None else round(max(0.0, jitter), 1),
        )


def inbound_video(pc: RTCPeerConnection) -> tuple[float, float, float | None]:
    """Packets received and lost, and jitter (ms), of the video `pc` receives, retransmission
    streams left out.

    aiortc's getStats gives every SSRC a receiver sees the same inbound-rtp id, so once a
    retransmission (RTX) stream appears its counters replace the media stream's in the report
    (and stop moving when retransmissions do: no loss figure at all afterwards). Its receiver
    keeps each SSRC's statistics apart; this reads them (aiortc's own RTCP uses the same).
    """
    received = lost = 0.0
    jitter: float | None = None
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "video" or receiver is None:
            continue
        streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
        rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", None)
        if not isinstance(streams, dict) or not isinstance(rtx, dict):
            continue
        media = set(rtx.values()) & set(streams) or set(streams) - set(rtx)
        for ssrc, stream in list(streams.items()):
            if ssrc not in media:
                continue
            received += stream.packets_received
            lost += max(0, stream.packets_lost)
            jitter = stream.jitter / 90
    return received, lost, jitter


async def close_quietly(pc: RTCPeerConnection, timeout: float = 5.0) -> None:
    """Close a peer connection without letting a wedged transport hold the caller."""
    try:
        async with asyncio.timeout(timeout):
            await pc.close()
    except Exception as exc:  # closing is best effort; the connection is abandoned anyway
        log.warning("peer_close_failed error=%s", f"{type(exc).__name__}: {exc}"[:200])


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]

