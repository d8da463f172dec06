"""The Janus backend's compositor: one per session, itself a Janus client.

It subscribes to every point's camera feed in the VideoRoom (one receive-only aiortc peer per
feed), keeps each point's latest decoded picture, composes the grid at `bridge.fps` in a
worker thread, encodes it ONCE, and publishes it back into the VideoRoom as the "composed"
feed that every point's view leg subscribes to; Janus copies those packets to every point, so
the Python side pays one encode and one outgoing SRTP stream whatever the session size.
Janus forwards the viewers' PLIs to this publisher, where they force a key frame.

A second, light rendition (`bridge.light_*`, feed `LIGHT_FEED`) is published beside it for
points whose downlink cannot carry the full picture; the bridge switches their view legs onto
it. It is encoded from the same composed frame (scaled, no second composition), and only while
at least one point receives it (`want_light` / `release_light`): otherwise its publisher idles.

Latency stays bounded under CPU shortage: the picture is taken from the newest decoded frame
(older ones are skipped, never queued), and a compose tick that falls behind skips ahead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

from tiepdan.controller.config import BridgeSection
from tiepdan.controller.sessions.bridge.compositor import Compositor, TileView, grid
from tiepdan.controller.sessions.bridge.janus_api import JanusApiError, JanusConnection
from tiepdan.controller.sessions.bridge.janus_api import JanusHandle as Handle
from tiepdan.controller.sessions.bridge.janus_publisher import JanusPublisher
from tiepdan.firmware import protocol
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import VIDEO_TIME_BASE, H264Encoder
from tiepdan.firmware.media.latest import bound_decoder, bound_socket_age, latest_frames
from tiepdan.firmware.media.rtc import close_quietly, peer_connection

log = logging.getLogger(__name__)

COMPOSED_FEED = 1  # the VideoRoom publisher id of the composed picture
LIGHT_FEED = 2  # ... and of its light rendition


@dataclass
class Feed:
    """One point's camera as the compositor receives it."""

    device: str
    name: str
    role: protocol.PointRole
    feed: int
    frame: av.VideoFrame | None = None
    frames: int = 0
    last_media: float = 0.0
    pc: RTCPeerConnection | None = None
    handle: Handle | None = None
    tasks: list[asyncio.Future[None]] = field(default_factory=list)


FrameListener = Callable[[str, int], None]


class JanusCompositor:
    def __init__(self, session_id: str, config: BridgeSection, connection: JanusConnection,
                 room: int) -> None:
        self.session_id = session_id
        self.config = config
        self._connection = connection
        self.room = room
        self.encoder = H264Encoder(config.width, config.height, config.fps, config.bitrate,
                                   keyframe_interval=config.keyframe_interval,
                                   preset=config.preset)
        self.composed_video: Fanout[av.Packet[Stream]] = Fanout(
            f"composed-{session_id}", is_key=lambda p: bool(p.is_keyframe),
            on_key_request=self.encoder.request_key)
        self.full = JanusPublisher(session_id, "composed", COMPOSED_FEED, self.composed_video)
        # The light rendition: its encoder exists while `light_viewers` is not empty.
        self.light_video: Fanout[av.Packet[Stream]] = Fanout(
            f"composed-light-{session_id}", is_key=lambda p: bool(p.is_keyframe),
            on_key_request=self._light_key)
        self.light = JanusPublisher(session_id, "composed-light", LIGHT_FEED, self.light_video)
        self.light_viewers: set[str] = set()
        self.light_encoder: H264Encoder | None = None
        self.feeds: dict[str, Feed] = {}
        self.speaker: str | None = None
        self.frames_composed = 0
        self.on_frame: FrameListener | None = None  # (device, frames so far) per picture in
        self._compositor = Compositor(config.width, config.height)
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"jcompose-{session_id}")
        self.published = self.full.published  # Janus has the composed feed (webrtcup)
        self._tasks: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        """Publish the composed feed (and the idle light one); returns once Janus answered."""
        self._tasks.append(asyncio.ensure_future(self._compose_loop()))
        await self.full.start(self._connection, self.room)
        if self.config.light_rendition:
            await self.light.start(self._connection, self.room)
        log.info("janus_compositor_start session=%s room=%d size=%dx%d fps=%d light=%s",
                 self.session_id, self.room, self.config.width, self.config.height,
                 self.config.fps, f"{self.config.light_width}x{self.config.light_height}"
                 if self.config.light_rendition else "off")

    # -- the light rendition ---------------------------------------------------------------------

    def want_light(self, device: str) -> None:
        """`device` receives the light rendition: encode it (a fresh encoder starts with a key
        frame; a running one is asked for one, as the point's switch needs it)."""
        self.light_viewers.add(device)
        if self.light_encoder is None:
            c = self.config
            self.light_encoder = H264Encoder(c.light_width, c.light_height, c.fps,
                                             c.light_bitrate,
                                             keyframe_interval=c.keyframe_interval,
                                             preset=c.preset)
            log.info("composed_light_start session=%s size=%dx%d bitrate=%d", self.session_id,
                     c.light_width, c.light_height, c.light_bitrate)
        else:
            self.light_encoder.request_key()

    def release_light(self, device: str) -> None:
        """`device` no longer receives the light rendition; the last one stops its encoding."""
        self.light_viewers.discard(device)
        if not self.light_viewers and self.light_encoder is not None:
            encoder, self.light_encoder = self.light_encoder, None
            log.info("composed_light_stop session=%s frames=%d", self.session_id,
                     encoder.frames)

    def _light_key(self) -> None:
        encoder = self.light_encoder
        if encoder is not None:
            encoder.request_key()

    # -- feeds -----------------------------------------------------------------------------------

    def add(self, device: str, name: str, role: protocol.PointRole, feed: int) -> Feed:
        """A tile for the point (a placeholder until `subscribe` brings its picture)."""
        entry = self.feeds.get(device)
        if entry is None:
            entry = self.feeds[device] = Feed(device, name, role, feed)
        entry.feed = feed
        return entry

    async def subscribe(self, device: str) -> None:
        """Receive the point's camera feed (it is published: Janus said webrtcup)."""
        entry = self.feeds.get(device)
        if entry is None:
            return
        await self._unsubscribe(entry)
        handle = entry.handle = await self._connection.attach("janus.plugin.videoroom")
        _, jsep = await handle.message({"request": "join", "room": self.room,
                                        "ptype": "subscriber",
                                        "streams": [{"feed": entry.feed}]})
        if jsep is None:
            raise JanusApiError(f"no offer for feed {entry.feed}")
        pc = entry.pc = peer_connection()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            entry.tasks.append(asyncio.ensure_future(self._receive(entry, pc, track)))

        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "offer"))
        bound_decoder(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        bound_socket_age(pc)
        await handle.message({"request": "start"},
                             {"type": "answer", "sdp": pc.localDescription.sdp})
        entry.last_media = time.monotonic()
        log.info("janus_compositor_subscribed session=%s device=%s feed=%d", self.session_id,
                 device, entry.feed)

    async def remove(self, device: str) -> None:
        entry = self.feeds.pop(device, None)
        if entry is not None:
            await self._unsubscribe(entry)

    async def drop_picture(self, device: str) -> None:
        """The point is lost: keep its tile as a placeholder, stop receiving it."""
        entry = self.feeds.get(device)
        if entry is not None:
            await self._unsubscribe(entry)
            entry.frame = None

    async def _unsubscribe(self, entry: Feed) -> None:
        tasks, entry.tasks = entry.tasks, []
        for task in tasks:
            task.cancel()
        pc, entry.pc = entry.pc, None
        handle, entry.handle = entry.handle, None
        if pc is not None:
            await close_quietly(pc)
        if handle is not None:
            await handle.detach()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, entry: Feed, pc: RTCPeerConnection,
                       track: MediaStreamTrack) -> None:
        try:
            async for frame in latest_frames(track):
                if entry.pc is not pc:
                    return
                if isinstance(frame, av.VideoFrame):
                    entry.frame = frame
                    entry.frames += 1
                    entry.last_media = time.monotonic()
                    if self.on_frame is not None:
                        self.on_frame(entry.device, entry.frames)
        except MediaStreamError:
            return

    # -- composing -------------------------------------------------------------------------------

    def tiles(self) -> list[Feed]:
        """Host first, then in order of arrival."""
        feeds = list(self.feeds.values())
        return [f for f in feeds if f.role == "host"] + [f for f in feeds if f.role != "host"]

    def layout(self) -> protocol.CallLayout:
        feeds = self.tiles()
        rects, _ = grid(len(feeds), self.config.width, self.config.height)
        return protocol.CallLayout(
            session=self.session_id, width=self.config.width, height=self.config.height,
            tiles=[protocol.Tile(device=f.device, name=f.name[:200], x=r.x, y=r.y,
                                 width=r.width, height=r.height)
                   for r, f in zip(rects, feeds, strict=True)],
            speaker=self.speaker, ts=protocol.now_ms())

    async def _compose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1 / self.config.fps
        started = loop.time()
        tick = 0
        while True:
            feeds = self.tiles()
            rects, gutter = grid(len(feeds), self.config.width, self.config.height)
            views = [TileView(rect, f.name, f.frame, f.device == self.speaker)
                     for rect, f in zip(rects, feeds, strict=True)]
            pts = round((loop.time() - started) * 90000)
            light = self.light_encoder
            try:
                packets, light_packets = await loop.run_in_executor(
                    self._worker, self._render, views, gutter, pts, light)
            except RuntimeError:  # the worker was shut down with the session
                return
            self.frames_composed += 1
            for packet in packets:
                self.composed_video.publish(packet)
            for packet in light_packets:
                self.light_video.publish(packet)
            tick += 1
            due = started + tick * period
            now = loop.time()
            if now - due > period:  # behind: skip the ticks we missed, never burst
                tick = int((now - started) / period) + 1
                due = started + tick * period
            await asyncio.sleep(max(0.0, due - now))

    def _render(self, views: list[TileView], gutter: int, pts: int,
                light: H264Encoder | None) -> tuple[list[av.Packet[Stream]],
                                                    list[av.Packet[Stream]]]:
        """Compose once; encode the full picture, and the light one from the same frame."""
        frame = self._compositor.compose(views, gutter)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        packets = self.encoder.encode(frame)
        if light is None:
            return packets, []
        scaled = frame.reformat(width=light.width, height=light.height, format="yuv420p")
        scaled.pts, scaled.time_base = pts, VIDEO_TIME_BASE
        return packets, light.encode(scaled)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device in list(self.feeds):
            await self.remove(device)
        await self.full.close()
        await self.light.close()
        self._worker.shutdown(wait=False, cancel_futures=True)
