"""Light session points for the session benchmark: the bridge's load without the boxes' own.

A full box point encodes its camera, decodes the composed picture, records and draws its
screen; at 1 + 16 on two cores the points, not the bridge, would be what the figure measures.
A replay point is a box as the bridge sees it (MQTT presence, `session-invite`, the call's
offers and answers for plan "single" and "split", key frame requests, bye) whose media costs
almost nothing:

- its camera is H.264 recorded once at start (the synthetic camera through the same libx264
  settings as a box) and replayed in a loop at 15 fps; a key frame request skips ahead to the
  next key frame of the clip (one a second);
- its microphone is Opus packets recorded once (a tone), sent as they are;
- what it receives is counted, whole frame by whole frame, and never decoded: a `FrameCounter`
  stands in for aiortc's decoder queue.

One point in a run measures (`measure=True`): it sends its live synthetic camera (encoded as a
box does, with the burned-in tag carrying the capture time) and decodes the composed picture as
a box does, reading the tag in its own tile: glass-to-glass latency on one host clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

from tiepdan.board.camera.synthetic import SyntheticCamera
from tiepdan.board.camera.tag import read_tag
from tiepdan.board.profile import CameraSpec
from tiepdan.firmware import protocol
from tiepdan.firmware.call.encoder import CameraEncoder
from tiepdan.firmware.core.mqtt import Inbound, LinkSettings, MqttLink, Will
from tiepdan.firmware.media.h264 import VIDEO_TIME_BASE, H264Encoder
from tiepdan.firmware.media.latest import bound_decoder, bound_socket_age, latest_frames
from tiepdan.firmware.media.rtc import (
    LIVE_MAX_AGE_S,
    LIVE_VIDEO_QUEUE,
    PacketTrack,
    check_sdp,
    close_quietly,
    describe,
    on_keyframe_request,
    peer_connection,
    prefer_h264,
)

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 640, 360, 15  # what a box's synthetic camera sends
VIDEO_BITRATE = 1_000_000  # a box's default `call.video_bitrate`
CLIP_SECONDS = 4.0
CLIP_KEY_INTERVAL = 1.0  # a key frame request waits at most this long
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
ANSWER_TIMEOUT_S = 30.0
MEDIA_TIMEOUT_S = 8.0  # no composed picture for this long: rejoin, as a box does
TAG_READS_PER_S = 5.0  # the measuring point reads its tile's tag this often
# aiortc's receiver hands complete encoded frames to its decoder thread through this queue
# (`tiepdan.firmware.media.latest` bounds the same one).
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


@dataclass(frozen=True)
class Clip:
    video: list[av.Packet[Stream]]  # H.264 access units, the first a key frame
    audio: list[av.Packet[Stream]]  # Opus, 20 ms each


def record_clip(label: str = "Replay") -> Clip:
    """Encode the synthetic camera and a tone once; every replay point of a process sends them."""
    camera = SyntheticCamera(CameraSpec("synthetic", "", WIDTH, HEIGHT, FPS), label=label)
    encoder = H264Encoder(WIDTH, HEIGHT, FPS, VIDEO_BITRATE, keyframe_interval=CLIP_KEY_INTERVAL)
    video: list[av.Packet[Stream]] = []
    for tick in range(round(CLIP_SECONDS * FPS)):
        frame = av.VideoFrame.from_ndarray(camera.render(tick), format="yuv420p")
        frame.pts, frame.time_base = tick * 90000 // FPS, VIDEO_TIME_BASE
        video += encoder.encode(frame)
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = AUDIO_RATE, "stereo", "s16"  # as aiortc sends
    opus.bit_rate = 32000
    audio: list[av.Packet[Stream]] = []
    t = np.arange(round(CLIP_SECONDS * AUDIO_RATE)) / AUDIO_RATE
    tone = (3000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
    for n in range(len(tone) // AUDIO_FRAME):
        samples = np.repeat(tone[n * AUDIO_FRAME:(n + 1) * AUDIO_FRAME], 2).reshape(1, -1)
        sound = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        sound.sample_rate, sound.pts, sound.time_base = AUDIO_RATE, n * AUDIO_FRAME, \
            AUDIO_TIME_BASE
        audio += opus.encode(sound)
    if not video or not video[0].is_keyframe or not audio:
        raise RuntimeError("recording the replay clip failed")
    return Clip(video, audio)


class ReplayTrack(MediaStreamTrack):
    """Sends a recorded clip's packets in a loop, paced by the clock, never re-encoded."""

    def __init__(self, kind: Literal["audio", "video"], packets: list[av.Packet[Stream]]) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._keys = [i for i, p in enumerate(packets) if p.is_keyframe] if kind == "video" \
            else []
        self._period = 1 / FPS if kind == "video" else AUDIO_FRAME / AUDIO_RATE
        self._step = 90000 // FPS if kind == "video" else AUDIO_FRAME
        self._time_base = VIDEO_TIME_BASE if kind == "video" else AUDIO_TIME_BASE
        self._index = 0
        self._sent = 0
        self._start: float | None = None
        self._want_key = False

    def request_key(self) -> None:
        """The next packet is the clip's next key frame (a receiver lost the picture)."""
        self._want_key = True

    async def recv(self) -> av.Packet[Stream]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._sent * self._period
        now = loop.time()
        if now - due > 5 * self._period:  # far behind (a starved loop): skip, never burst
            self._sent = int((now - self._start) / self._period)
            due = self._start + self._sent * self._period
        await asyncio.sleep(max(0.0, due - now))
        if self._want_key and self._keys:
            self._want_key = False
            self._index = next((k for k in self._keys if k >= self._index), 0)
        recorded = self._packets[self._index % len(self._packets)]
        self._index = (self._index + 1) % len(self._packets)
        packet = av.Packet(bytes(recorded))
        packet.pts = packet.dts = self._sent * self._step
        packet.time_base = self._time_base
        packet.is_keyframe = recorded.is_keyframe
        self._sent += 1
        return packet


class FrameCounter(queue.Queue[Any]):
    """In place of aiortc's decoder queue: each complete encoded frame is counted, then
    dropped (nothing is decoded). The receiver's stop marker still reaches its decoder
    thread."""

    def __init__(self, on_frame: Callable[[], None]) -> None:
        super().__init__()
        self._on_frame = on_frame

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item, block, timeout)
        else:
            self._on_frame()


class AttemptFailed(Exception):
    pass


@dataclass
class Figures:
    """What a point saw: arrival times of composed pictures, and (measuring) tag ages."""

    arrivals: list[float] = field(default_factory=list)
    ages: list[tuple[float, int]] = field(default_factory=list)


class ReplayPoint:
    """One point: MQTT presence and commands, and the call the bridge invites it to."""

    def __init__(self, device: str, name: str, host: str, port: int, clip: Clip, *,
                 kind: Literal["central", "province", "commune"] = "commune",
                 measure: bool = False) -> None:
        self.device, self.name, self.kind = device, name, kind
        self.measure = measure
        self.figures = Figures()
        self._clip = clip
        self._seq = 0
        self.link = MqttLink(
            LinkSettings(host=host, port=port, client_id=device, session_expiry=0),
            on_message=self._on_message, on_connect=self._on_connect,
            before_connect=self._before_connect)
        self._invite: protocol.SessionInvite | None = None
        self._attempt = 0
        self._call: asyncio.Task[None] | None = None
        self._answers: dict[str, asyncio.Future[protocol.CallAnswer]] = {}
        self._offers: dict[str, asyncio.Future[protocol.CallOffer]] = {}
        self._bye = asyncio.Event()
        self._video: ReplayTrack | None = None
        self._camera: CameraEncoder | None = None
        self._layout: protocol.CallLayout | None = None
        self._last_media = 0.0
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- presence and commands ---------------------------------------------------------------

    def _before_connect(self) -> Will:
        self._seq += 1
        lost = protocol.DeviceState(state="lost", seq=self._seq, ts=protocol.now_ms())
        return Will(protocol.state_topic(self.device), protocol.encode(lost))

    async def _on_connect(self, session_present: bool) -> None:
        await self.link.subscribe((protocol.device_filter(self.device, "cmd/+"), 1),
                                  (protocol.device_filter(self.device, "call/+/down"), 1))
        birth = protocol.Birth(
            seq=self._seq, ts=protocol.now_ms(), firmware="bench-replay", board="replay",
            boot_id=f"replay-{self.device}", point=protocol.Point(kind=self.kind, name=self.name),
            keepalive=self.link.settings.keepalive, capabilities=["commands"])
        self.link.publish(protocol.birth_topic(self.device), protocol.encode(birth), retain=True)
        ready = protocol.DeviceState(state="ready", seq=self._seq, ts=protocol.now_ms())
        self.link.publish(protocol.state_topic(self.device), protocol.encode(ready), retain=True)

    def _on_message(self, message: Inbound) -> None:
        try:
            topic = protocol.parse_topic(message.topic)
            if topic.kind == "cmd" and len(topic.rest) == 1:
                self._command(topic.rest[0], message)
            elif topic.kind == "call" and topic.rest[1:] == ("down",):
                self._down(topic.rest[0], protocol.decode_call_down(message.payload))
        except protocol.ProtocolError as exc:
            log.warning("replay_message_refused device=%s topic=%s error=%s", self.device,
                        message.topic[:120], exc)

    def _command(self, name: str, message: Inbound) -> None:
        command = protocol.decode(message.payload, protocol.Command)
        result: Any = {}
        if name == "session-invite":
            invite = protocol.convert(command.args, protocol.SessionInvite)
            if self._invite is None or self._invite.session != invite.session or \
                    self._call is None:
                self._start_call(invite)
            result = {"state": "joining"}
        elif name == "session-leave":
            self._bye.set()
        response = protocol.Response(id=command.id, ok=True, ts=protocol.now_ms(),
                                     result=result)
        if message.response_topic is not None:
            self.link.publish(message.response_topic, protocol.encode(response), qos=1,
                              correlation_data=message.correlation_data, expiry=300)

    def _down(self, call: str, down: protocol.CallDown) -> None:
        invite = self._invite
        if invite is None or call != invite.call:
            return
        if isinstance(down, protocol.CallLayout):
            self._layout = down
        elif isinstance(down, protocol.CallBye):
            self._bye.set()
        elif down.attempt != self._attempt:
            return
        elif isinstance(down, protocol.KeyframeRequest):
            self._request_key()
        elif isinstance(down, protocol.CallAnswer):
            answer = self._answers.get(down.leg)
            if answer is not None and not answer.done():
                answer.set_result(down)
        elif isinstance(down, protocol.CallOffer):
            offer = self._offers.get(down.leg)
            if offer is not None and not offer.done():
                offer.set_result(down)
        else:
            for waiting in self._waits():
                if not waiting.done():
                    waiting.set_exception(AttemptFailed(f"refused: {down.code}: "
                                                        f"{down.message}"))

    # -- the call ----------------------------------------------------------------------------

    def _waits(self) -> list[asyncio.Future[Any]]:
        return [*self._answers.values(), *self._offers.values()]

    def _start_call(self, invite: protocol.SessionInvite) -> None:
        self._invite, self._attempt = invite, invite.attempt
        self._bye.clear()
        self._call = asyncio.ensure_future(self._run_call(invite))
        self._tasks.add(self._call)

    async def _run_call(self, invite: protocol.SessionInvite) -> None:
        if self.measure:
            camera = SyntheticCamera(CameraSpec("synthetic", "", WIDTH, HEIGHT, FPS),
                                     label=self.name)
            self._camera = CameraEncoder(camera, bitrate=VIDEO_BITRATE, keyframe_interval=4.0)
            encoding = asyncio.ensure_future(self._camera.run())
        try:
            while not self._bye.is_set():
                self._attempt += 1
                try:
                    await self._attempt_call(invite)
                except AttemptFailed as exc:
                    log.warning("replay_rejoin device=%s attempt=%d reason=%s", self.device,
                                self._attempt, exc)
                    await asyncio.sleep(1.0)
        finally:
            if self.measure:
                encoding.cancel()
                await asyncio.gather(encoding, return_exceptions=True)
            self._call = None

    def _video_track(self) -> MediaStreamTrack:
        if self._camera is not None:
            return PacketTrack(self._camera.video.subscribe(
                f"call-{self._attempt}", capacity=LIVE_VIDEO_QUEUE, max_age=LIVE_MAX_AGE_S))
        self._video = ReplayTrack("video", self._clip.video)
        return self._video

    def _request_key(self) -> None:
        if self._camera is not None:
            self._camera.request_key()
        elif self._video is not None:
            self._video.request_key()

    async def _attempt_call(self, invite: protocol.SessionInvite) -> None:
        loop = asyncio.get_running_loop()
        servers = invite.ice_servers
        split = invite.plan == "split"
        legs: list[RTCPeerConnection] = []
        receivers: list[asyncio.Future[None]] = []
        try:
            send = peer_connection(servers)
            legs.append(send)
            video = send.addTransceiver(self._video_track(),
                                        direction="sendonly" if split else "sendrecv")
            prefer_h264(video)
            on_keyframe_request(video.sender, self._request_key)
            audio = peer_connection(servers) if split else send
            if split:
                legs.append(audio)
            audio.addTransceiver(ReplayTrack("audio", self._clip.audio), direction="sendrecv")
            self._answers = {leg: loop.create_future()
                             for leg in (("publish", "audio") if split else ("main",))}
            self._offers = {"view": loop.create_future()} if split else {}
            offered: list[tuple[RTCPeerConnection, protocol.Leg]] = \
                [(send, "publish"), (audio, "audio")] if split else [(send, "main")]
            for pc, leg in offered:
                await pc.setLocalDescription(await pc.createOffer())
                self._send_up(protocol.CallOffer(
                    session=invite.session, attempt=self._attempt, sdp=pc.localDescription.sdp,
                    ts=protocol.now_ms(), leg=leg))
                answer = await self._wait(self._answers[leg])
                kinds = ("video",) if leg == "publish" else ("audio",) if leg == "audio" \
                    else ("audio", "video")
                await self._remote(pc, answer.sdp, "answer", kinds, receivers)
            if split:
                view = peer_connection(servers)
                legs.append(view)
                offer = await self._wait(self._offers["view"])
                await self._remote(view, offer.sdp, "offer", ("video",), receivers)
                await view.setLocalDescription(await view.createAnswer())
                bound_socket_age(view)
                self._send_up(protocol.CallAnswer(
                    session=invite.session, attempt=self._attempt, sdp=view.localDescription.sdp,
                    ts=protocol.now_ms(), leg="view"))
            await self._watch(legs)
        finally:
            for waiting in self._waits():
                if waiting.done() and not waiting.cancelled():
                    waiting.exception()
            self._answers, self._offers = {}, {}
            for receiver in receivers:
                receiver.cancel()
            for pc in legs:
                await close_quietly(pc)
            await asyncio.gather(*receivers, return_exceptions=True)

    async def _wait(self, due: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return await due
        except TimeoutError:
            raise AttemptFailed("the bridge did not answer") from None

    async def _remote(self, pc: RTCPeerConnection, sdp: str, kind: Literal["offer", "answer"],
                      kinds: tuple[str, ...], receivers: list[asyncio.Future[None]]) -> None:
        """Take the bridge's description, then put counters (or, measuring, a bounded decoder
        for the video) where aiortc's decoders would take the received frames."""
        try:
            check_sdp(sdp, kind, kinds=kinds)
            await pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        except (protocol.ProtocolError, ValueError) as exc:
            raise AttemptFailed(f"unusable {kind}: {describe(exc)}") from None
        if self.measure:
            bound_decoder(pc)
        for transceiver in pc.getTransceivers():
            if transceiver.direction == "sendonly":
                continue
            if transceiver.kind == "video" and self.measure:
                receivers.append(asyncio.ensure_future(
                    self._decode(transceiver.receiver.track)))
            else:
                on_frame = self._arrived if transceiver.kind == "video" else _nothing
                setattr(transceiver.receiver, _DECODER_QUEUE, FrameCounter(on_frame))
        if kind == "answer":
            bound_socket_age(pc)

    def _arrived(self) -> None:
        now = time.time()
        self._last_media = time.monotonic()
        self.figures.arrivals.append(now)

    async def _decode(self, track: MediaStreamTrack) -> None:
        """The measuring point: every decoded composed picture counts; its own tile's tag,
        read a few times a second, gives the latency."""
        next_read = 0.0
        with contextlib.suppress(MediaStreamError):
            async for frame in latest_frames(track):
                self._arrived()
                now = time.time()
                layout = self._layout
                if layout is None or now < next_read:
                    continue
                next_read = now + 1 / TAG_READS_PER_S
                tile = next((t for t in layout.tiles if t.device == self.device), None)
                if tile is None:
                    continue
                luma = frame.to_ndarray()[: frame.height]
                tag = read_tag(luma[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width])
                if tag is not None:
                    self.figures.ages.append((now, tag.age_ms(int(now * 1000) & 0xFFFFFFFF)))

    async def _watch(self, legs: list[RTCPeerConnection]) -> None:
        joined = time.monotonic()
        self._last_media = 0.0
        while not self._bye.is_set():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for pc in legs:
                if pc.connectionState in ("failed", "closed"):
                    raise AttemptFailed(f"connection {pc.connectionState}")
            if self._last_media < joined and now - joined > ANSWER_TIMEOUT_S:
                raise AttemptFailed("no composed picture after joining")
            if self._last_media >= joined and now - self._last_media > MEDIA_TIMEOUT_S:
                raise AttemptFailed(f"no composed picture for {MEDIA_TIMEOUT_S:g}s")

    def _send_up(self, message: protocol.CallUp) -> None:
        assert self._invite is not None
        self.link.publish(protocol.call_topic(self.device, self._invite.call, "up"),
                          protocol.encode(message), qos=1, expiry=protocol.SIGNAL_EXPIRY)

    # -- life --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled; leaves the call and goes offline on the way out."""
        link = asyncio.ensure_future(self.link.run())
        try:
            await asyncio.Event().wait()
        finally:
            self._bye.set()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.link.stop()
            await asyncio.gather(link, return_exceptions=True)


def _nothing() -> None:
    pass
