"""The built-in bridge: aiortc peers, one composed picture encoded once, audio mix-minus.

Per session: every point's video is decoded (aiortc's receiver, in its own thread) and the
latest frame kept; a compositor tick (at `bridge.fps`, in a worker thread) lays the frames out
in a grid, names them, frames the active speaker and encodes the picture ONCE; the packets go
into `composed_video`, to which every point's sender subscribes (aiortc senders only packetize
pre-encoded packets). A key frame is forced when a point subscribes and when a receiver sends
a PLI, which aiortc would otherwise hand to a per-sender encoder that does not exist here.
Audio is decoded per point and mixed every 20 ms; each point gets the mix without itself,
which its own sender encodes to Opus (cheap, unlike video).

Adaptive bitrate (`bridge.adaptive_bitrate`): each point's REMB and receiver reports feed a
`BitrateController` of its own, and the one encoder runs at the lowest of their targets, never
under `bridge.min_bitrate`. Encoding per receiver would let every point have its own rate, at
an encode per point (the naive relay this bridge was measured against, CPU-bound at 1 + 8 on
two cores); a session shares one picture and one rate, and the floor keeps one hall on a poor
link from dragging the others below a watchable picture (that hall then loses some frames).

A point that stops sending (`bridge.media_timeout`) or never connects
(`bridge.connect_timeout`) is dropped from the media path and reported `lost`; its tile stays,
as a placeholder, until the engine says it has left. Nothing a point does can stall the
others: inputs are only read, outputs are bounded queues.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

from tiepdan.controller.config import BridgeSection
from tiepdan.controller.sessions.bridge import Bridge, BridgeError, BridgeSession
from tiepdan.controller.sessions.bridge.compositor import Compositor, TileView, grid
from tiepdan.controller.sessions.bridge.mixer import FRAME, RATE, Mixer, to_frame
from tiepdan.firmware import protocol
from tiepdan.firmware.media.bitrate import BitrateController, Rung, watch_feedback
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import VIDEO_TIME_BASE, H264Encoder
from tiepdan.firmware.media.latest import bound_decoder, bound_socket_age, latest_frames
from tiepdan.firmware.media.rtc import (
    LIVE_AUDIO_QUEUE,
    LIVE_MAX_AGE_S,
    LIVE_VIDEO_QUEUE,
    FrameTrack,
    PacketTrack,
    QosMeter,
    check_sdp,
    close_quietly,
    describe,
    on_keyframe_request,
    peer_connection,
    prefer_h264,
)

log = logging.getLogger(__name__)



@dataclass
class Member:
    device: str
    name: str
    role: protocol.PointRole
    attempt: int = 0
    pc: RTCPeerConnection | None = None
    state: str = "connecting"  # connecting | live | lost
    since: float = field(default_factory=time.monotonic)
    last_media: float = 0.0
    frame: av.VideoFrame | None = None
    frames_received: int = 0
    video_track: PacketTrack | FrameTrack | None = None
    audio_out: Fanout[av.AudioFrame] | None = None
    tasks: list[asyncio.Future[None]] = field(default_factory=list)
    meter: QosMeter | None = None
    bitrate: BitrateController | None = None

    def sent(self) -> int:
        return self.video_track.sent if self.video_track is not None else 0


class AiortcSession(BridgeSession):
    def __init__(self, session_id: str, config: BridgeSection, bridge: AiortcBridge) -> None:
        self.id = session_id
        self.config = config
        self._bridge = bridge
        self.encoder = H264Encoder(config.width, config.height, config.fps, config.bitrate,
                                   keyframe_interval=config.keyframe_interval,
                                   preset=config.preset)
        self.composed_video: Fanout[av.Packet[Stream]] = Fanout(
            f"composed-{session_id}", is_key=lambda p: bool(p.is_keyframe),
            on_key_request=self.encoder.request_key)
        # The raw composed picture, for a consumer that must encode for itself.
        self.composed_frames: Fanout[av.VideoFrame] = Fanout(f"frames-{session_id}")
        self.mixed_audio: Fanout[av.AudioFrame] = Fanout(f"mix-{session_id}")
        self.members: dict[str, Member] = {}
        self.mixer = Mixer()
        self._compositor = Compositor(config.width, config.height)
        # One worker keeps compose+encode in order and off the event loop.
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"compose-{session_id}")
        self._tasks = [asyncio.ensure_future(self._compose_loop()),
                       asyncio.ensure_future(self._mix_loop()),
                       asyncio.ensure_future(self._watch_loop())]
        self._layout: protocol.CallLayout | None = None
        self._frames_composed = 0

    @property
    def frames_composed(self) -> int:
        return self._frames_composed

    # -- membership ------------------------------------------------------------------------------

    async def join(self, device: str, name: str, role: protocol.PointRole, attempt: int,
                   offer: str) -> str:
        member = self.members.get(device)
        if member is not None and member.pc is not None and attempt <= member.attempt:
            raise BridgeError("conflict", f"{device} is already connected with attempt "
                                          f"{member.attempt}; attempt {attempt} is stale")
        try:
            check_sdp(offer, "offer")
        except protocol.ProtocolError as exc:
            raise BridgeError("bad_request", str(exc)) from None
        if member is None:
            member = Member(device=device, name=name, role=role)
            self.members[device] = member
            self.mixer.add(device)
        else:
            await self._disconnect(member, "replaced")
        member.attempt, member.state, member.since = attempt, "connecting", time.monotonic()
        member.frames_received = 0
        pc = member.pc = peer_connection()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            video_track, on_key = self._video_source(member)
            member.video_track = video_track
            pc.addTrack(video_track)
            member.audio_out = Fanout(f"minus-{device}")
            pc.addTrack(FrameTrack("audio", member.audio_out.subscribe(
                "sender", capacity=LIVE_AUDIO_QUEUE, max_age=LIVE_MAX_AGE_S)))
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    prefer_h264(transceiver)
                    on_keyframe_request(transceiver.sender, on_key)
                    member.bitrate = self._bitrate_control(device)
                    if member.bitrate is not None:
                        watch_feedback(transceiver.sender, member.bitrate)
            # The offer's tracks exist once setRemoteDescription has returned.
            for transceiver in pc.getTransceivers():
                track = transceiver.receiver.track
                member.tasks.append(asyncio.ensure_future(self._receive(member, pc, track)))
            bound_decoder(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            bound_socket_age(pc)
        except Exception as exc:
            await self._disconnect(member, "bad offer")
            log.error("bridge_offer_failed session=%s device=%s attempt=%d error=%s", self.id,
                      device, attempt, describe(exc))
            raise BridgeError("bad_request", f"offer not usable: {describe(exc)}") from None
        member.meter = QosMeter(pc, member.sent, lambda: member.frames_received)
        self._publish_layout()
        log.info("bridge_join session=%s device=%s attempt=%d members=%d", self.id, device,
                 attempt, len(self.members))
        return str(pc.localDescription.sdp)

    def _bitrate_control(self, device: str) -> BitrateController | None:
        """This point's estimate of what its downlink carries (one rung: the bridge does not
        change the composed picture's size, whose layout the points read)."""
        c = self.config
        if not c.adaptive_bitrate:
            return None
        floor = min(c.min_bitrate, c.bitrate)
        return BitrateController([Rung(c.width, c.height, c.fps, floor)], floor=floor,
                                 ceiling=c.bitrate, name=f"composed-{device}")

    def target_bitrate(self) -> int:
        """The composed picture's rate: what the slowest connected point can take."""
        targets = [m.bitrate.target for m in self.members.values()
                   if m.bitrate is not None and m.pc is not None]
        return min(targets, default=self.config.bitrate)

    def _video_source(self, member: Member) -> tuple[PacketTrack | FrameTrack,
                                                     Callable[[], None]]:
        """The composed stream for one point's sender, and where its PLIs go."""
        track = PacketTrack(self.composed_video.subscribe(member.device,
                                                          capacity=LIVE_VIDEO_QUEUE,
                                                          max_age=LIVE_MAX_AGE_S))
        return track, self.composed_video.request_key

    async def leave(self, device: str) -> None:
        member = self.members.pop(device, None)
        if member is None:
            return
        self.mixer.remove(device)
        await self._disconnect(member, "left")
        self._publish_layout()
        log.info("bridge_leave session=%s device=%s members=%d", self.id, device,
                 len(self.members))

    async def _disconnect(self, member: Member, why: str) -> None:
        pc, member.pc = member.pc, None
        member.frame = None
        tasks, member.tasks = member.tasks, []
        for task in tasks:
            task.cancel()
        if member.video_track is not None:
            member.video_track.stop()
            member.video_track = None
        if member.audio_out is not None:
            member.audio_out.close()
            member.audio_out = None
        if pc is not None:
            await close_quietly(pc)
            log.info("bridge_peer_closed session=%s device=%s attempt=%d why=%s", self.id,
                     member.device, member.attempt, why)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for member in list(self.members.values()):
            await self._disconnect(member, "session closed")
        self.members.clear()
        self.composed_video.close()
        self.composed_frames.close()
        self.mixed_audio.close()
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- media in --------------------------------------------------------------------------------

    async def _receive(self, member: Member, pc: RTCPeerConnection,
                       track: MediaStreamTrack) -> None:
        try:
            frames = latest_frames(track) if track.kind == "video" else _every_frame(track)
            async for frame in frames:
                if member.pc is not pc:
                    return
                member.last_media = time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    member.frame = frame
                    member.frames_received += 1
                    if member.state == "connecting":
                        member.state = "live"
                        log.info("bridge_peer_live session=%s device=%s attempt=%d "
                                 "after_s=%.2f", self.id, member.device, member.attempt,
                                 time.monotonic() - member.since)
                        self._bridge._peer_event(self.id, member.device, member.attempt,
                                                 "live", "")
                elif isinstance(frame, av.AudioFrame):
                    self.mixer.push(member.device, frame)
        except MediaStreamError:
            return

    async def _watch_loop(self) -> None:
        """Drop points that stopped sending or never connected."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for member in list(self.members.values()):
                if member.pc is None:
                    continue
                if member.state == "live" and now - member.last_media > self.config.media_timeout:
                    detail = f"no media for {now - member.last_media:.1f}s"
                elif member.state == "connecting" and \
                        now - member.since > self.config.connect_timeout:
                    detail = f"not connected after {self.config.connect_timeout:g}s " \
                             f"(ICE {member.pc.iceConnectionState})"
                elif member.pc.connectionState == "failed":
                    detail = "connection failed"
                else:
                    continue
                log.warning("bridge_peer_lost session=%s device=%s attempt=%d reason=%s",
                            self.id, member.device, member.attempt, detail)
                member.state = "lost"
                attempt = member.attempt
                await self._disconnect(member, detail)
                self._bridge._peer_event(self.id, member.device, attempt, "lost", detail)

    # -- media out -------------------------------------------------------------------------------

    def _tiles(self) -> list[Member]:
        """Host first, then in order of arrival."""
        members = list(self.members.values())
        return [m for m in members if m.role == "host"] + [m for m in members
                                                              if m.role != "host"]

    async def _compose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1 / self.config.fps
        started = loop.time()
        tick = 0
        while True:
            members = self._tiles()
            rects, gutter = grid(len(members), self.config.width, self.config.height)
            views = [TileView(rect, m.name, m.frame, m.device == self.mixer.speaker)
                     for rect, m in zip(rects, members, strict=True)]
            pts = round((loop.time() - started) * 90000)
            try:
                frame, packets = await loop.run_in_executor(self._worker, self._render, views,
                                                            gutter, pts, self.target_bitrate())
            except RuntimeError:  # the worker was shut down with the session
                return
            self._frames_composed += 1
            self.composed_frames.publish(frame)
            for packet in packets:
                self.composed_video.publish(packet)
            tick += 1
            due = started + tick * period
            now = loop.time()
            if now - due > 5 * period:  # far behind: skip, never burst
                tick = int((now - started) / period)
                due = started + tick * period
            await asyncio.sleep(max(0.0, due - now))

    def _render(self, views: list[TileView], gutter: int, pts: int,
                bitrate: int) -> tuple[av.VideoFrame, list[av.Packet[Stream]]]:
        frame = self._compositor.compose(views, gutter)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self.encoder.set_bitrate(bitrate)
        return frame, self.encoder.encode(frame)

    async def _mix_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME / RATE
        started = loop.time()
        tick = 0
        speaker = None
        while True:
            total, minus = self.mixer.mix()
            pts = tick * FRAME
            self.mixed_audio.publish(to_frame(total, pts))
            for device, samples in minus.items():
                member = self.members.get(device)
                if member is not None and member.audio_out is not None:
                    member.audio_out.publish(to_frame(samples, pts))
            if self.mixer.speaker != speaker:
                speaker = self.mixer.speaker
                self._publish_layout()
            tick += 1
            due = started + tick * period
            now = loop.time()
            if now - due > 5 * period:
                tick = int((now - started) / period)
                due = started + tick * period
            await asyncio.sleep(max(0.0, due - now))

    # -- layout and stats ------------------------------------------------------------------------

    def layout(self) -> protocol.CallLayout:
        members = self._tiles()
        rects, _ = grid(len(members), self.config.width, self.config.height)
        return protocol.CallLayout(
            session=self.id, width=self.config.width, height=self.config.height,
            tiles=[protocol.Tile(device=m.device, name=m.name[:200], x=r.x, y=r.y,
                                 width=r.width, height=r.height)
                   for r, m in zip(rects, members, strict=True)],
            speaker=self.mixer.speaker, ts=protocol.now_ms())

    def _publish_layout(self) -> None:
        layout = self.layout()
        previous = self._layout
        if previous is not None and previous.tiles == layout.tiles and \
                previous.speaker == layout.speaker:
            return
        self._layout = layout
        self._bridge._layout_changed(self.id, layout)

    async def stats(self) -> dict[str, protocol.CallQos]:
        result = {}
        for device, member in list(self.members.items()):
            if member.meter is not None and member.pc is not None:
                with contextlib.suppress(Exception):
                    result[device] = await member.meter.measure()
        return result


class AiortcBridge(Bridge[AiortcSession]):
    session_class: type[AiortcSession] = AiortcSession

    def __init__(self, config: BridgeSection) -> None:
        super().__init__()
        self.config = config

    async def join(self, session_id: str, device: str, name: str, role: protocol.PointRole,
                   attempt: int, offer: str, leg: protocol.Leg = "main") -> str:
        if leg != "main":
            raise BridgeError("bad_request", f"the aiortc bridge takes one connection per "
                                             f"point, not a {leg} leg")
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = self.session_class(session_id, self.config,
                                                                       self)
            log.info("bridge_session_start session=%s size=%dx%d fps=%d", session_id,
                     self.config.width, self.config.height, self.config.fps)
            self._media_started(session)
        return await session.join(device, name, role, attempt, offer)


async def _every_frame(track: MediaStreamTrack) -> AsyncIterator[object]:
    """Audio is never skipped: every frame goes to the mixer, whose FIFO is bounded."""
    while True:
        yield await track.recv()
