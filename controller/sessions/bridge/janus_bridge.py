"""The Janus backend: Janus carries the media, Python composes the one picture.

Per session a VideoRoom and an AudioBridge room. Each point connects with plan "split":
- its "publish" leg is a VideoRoom publisher (camera, H.264, forwarded by Janus, never decoded
  here except by the compositor);
- its "audio" leg is an AudioBridge participant: Janus mixes in C and sends each point the mix
  without itself (mix-minus);
- its "view" leg is a VideoRoom subscriber to the composed feed, offered by Janus: a point
  still receives one video stream.
One `JanusCompositor` per session subscribes to the points' feeds and publishes the composed
feed; one `MixTap` joins the AudioBridge muted and receives the full mix. Both feed the
bridge's recording as the aiortc bridge does (`composed_video`, `mixed_audio`).

A point whose downlink cannot carry the composed picture (its call telemetry, `link_report`,
judged by `RenditionRule`) has its view leg switched (VideoRoom "switch": same peer
connection, no renegotiation, Janus asks the new source for a key frame) onto the light
rendition, and back once its link has been clear for a while.

Janus's WebSocket API (`bridge.janus_url`, `bridge.janus_api_secret`) is driven from asyncio.
A point goes live when Janus receives its video (or the compositor decodes a picture of it),
and is lost when Janus has received no video from it for `bridge.media_timeout` (Janus's own
`media` events, so a compositor short of CPU never drops a healthy point), when Janus hangs
its publisher up, or when it never connects within `bridge.connect_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import av
from av.stream import Stream

from tiepdan.controller.config import BridgeSection
from tiepdan.controller.sessions.bridge import Bridge, BridgeError, BridgeSession
from tiepdan.controller.sessions.bridge.janus_api import (
    JanusApiError,
    JanusConnection,
    JanusHandle,
    Json,
)
from tiepdan.controller.sessions.bridge.janus_compositor import JanusCompositor
from tiepdan.controller.sessions.bridge.janus_mix import MixTap
from tiepdan.controller.sessions.bridge.rendition import Rendition, RenditionRule, Switch
from tiepdan.firmware import protocol
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.rtc import check_sdp, describe

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
AUDIOBRIDGE = "janus.plugin.audiobridge"
MAX_PUBLISHERS = 100


@dataclass
class JanusPoint:
    device: str
    name: str
    role: protocol.PointRole
    feed: int
    attempt: int = 0
    state: str = "connecting"  # connecting | live | lost
    since: float = field(default_factory=time.monotonic)
    publisher: JanusHandle | None = None
    audio: JanusHandle | None = None
    view: JanusHandle | None = None
    # Janus's own view of the point's video (its `media` events): when it stopped arriving.
    silent_since: float | None = None
    # Which rendition of the composed picture its view leg receives, by its downlink.
    rule: RenditionRule | None = None
    view_mid: str = "0"  # the view leg's video stream, which a switch names
    switching: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def rendition(self) -> Rendition:
        return "full" if self.rule is None else self.rule.rendition

    def handles(self) -> list[JanusHandle]:
        return [h for h in (self.publisher, self.audio, self.view) if h is not None]


class JanusSession(BridgeSession):
    def __init__(self, session_id: str, config: BridgeSection, bridge: JanusBridge,
                 connection: JanusConnection) -> None:
        self.id = session_id
        self.config = config
        self._bridge = bridge
        self._connection = connection
        self.room = secrets.randbelow(2**31 - 2) + 2
        self.points: dict[str, JanusPoint] = {}
        self._next_feed = 1000
        self.compositor = JanusCompositor(session_id, config, connection, self.room)
        self.compositor.on_frame = self._on_frame
        self.tap = MixTap(session_id, connection, self.room)
        self.tap.on_speaker = self._on_speaker
        self.composed_video: Fanout[av.Packet[Stream]] = self.compositor.composed_video
        self.mixed_audio: Fanout[av.AudioFrame] = self.tap.mixed_audio
        self._control: JanusHandle | None = None
        self._audio_control: JanusHandle | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._layout: protocol.CallLayout | None = None
        self._counted: dict[str, tuple[int, float]] = {}  # device -> (frames, when), for stats

    @property
    def frames_composed(self) -> int:
        return self.compositor.frames_composed

    async def start(self) -> None:
        """Create the rooms, publish the composed feed, join the mix tap."""
        self._control = await self._connection.attach(VIDEOROOM)
        await self._control.request({
            "request": "create", "room": self.room, "publishers": MAX_PUBLISHERS,
            "description": f"tiepdan {self.id}"[:100], "videocodec": "h264",
            "h264_profile": "42e01f", "audiocodec": "opus", "notify_joining": False,
            "fir_freq": 0, "bitrate": self.config.bitrate})
        self._audio_control = await self._connection.attach(AUDIOBRIDGE)
        await self._audio_control.request({
            "request": "create", "room": self.room, "sampling_rate": 48000,
            "description": f"tiepdan {self.id}"[:100], "audiolevel_event": True,
            "audio_active_packets": 25, "audio_level_average": 40})
        await self.compositor.start()
        await self.tap.start()
        self._spawn(self._watch_loop())
        log.info("janus_session_start session=%s room=%d", self.id, self.room)

    # -- legs ------------------------------------------------------------------------------------

    async def join(self, device: str, name: str, role: protocol.PointRole, attempt: int,
                   offer: str, leg: protocol.Leg) -> str:
        if leg == "publish":
            return await self._publish(device, name, role, attempt, offer)
        point = self.points.get(device)
        if point is None or point.attempt != attempt:
            raise BridgeError("conflict", f"{leg} leg for attempt {attempt} of {device}, "
                                          "which has not published it")
        if leg != "audio":
            raise BridgeError("bad_request", f"the Janus bridge takes a publish and an audio "
                                             f"leg from a point, not {leg}")
        _check(offer, ["audio"])
        if point.audio is not None:
            await point.audio.detach()
        handle = point.audio = await self._connection.attach(AUDIOBRIDGE)
        try:
            _, jsep = await handle.message(
                {"request": "join", "room": self.room, "id": point.feed,
                 "display": name[:100], "muted": False},
                {"type": "offer", "sdp": offer})
        except JanusApiError as exc:
            raise BridgeError("bad_request", f"audio offer not usable: {exc}") from None
        return _answer(jsep)

    async def _publish(self, device: str, name: str, role: protocol.PointRole, attempt: int,
                       offer: str) -> str:
        point = self.points.get(device)
        if point is not None and point.publisher is not None and attempt <= point.attempt:
            raise BridgeError("conflict", f"{device} is already connected with attempt "
                                          f"{point.attempt}; attempt {attempt} is stale")
        _check(offer, ["video"])
        if point is None:
            self._next_feed += 1
            point = self.points[device] = JanusPoint(device, name, role, self._next_feed)
            if self.config.light_rendition:
                point.rule = RenditionRule(self.config.light_loss, self.config.light_hold)
            self.compositor.add(device, name, role, point.feed)
        else:
            await self._disconnect(point, "replaced")
            # A fresh feed id: Janus may still hold the old publisher for a moment.
            self._next_feed += 1
            point.feed = self._next_feed
            self.compositor.add(device, name, role, point.feed)
        point.attempt, point.state, point.since = attempt, "connecting", time.monotonic()
        handle = point.publisher = await self._connection.attach(
            VIDEOROOM, lambda event: self._publisher_event(point, attempt, event))
        try:
            _, jsep = await handle.message(
                {"request": "joinandconfigure", "room": self.room, "ptype": "publisher",
                 "id": point.feed, "display": name[:100], "audio": False, "video": True},
                {"type": "offer", "sdp": offer})
        except JanusApiError as exc:
            await self._disconnect(point, "bad offer")
            log.error("bridge_offer_failed session=%s device=%s attempt=%d error=%s", self.id,
                      device, attempt, exc)
            raise BridgeError("bad_request", f"offer not usable: {exc}") from None
        answer = _answer(jsep)
        self._spawn(self._offer_view(point, attempt))
        self._publish_layout()
        log.info("bridge_join session=%s device=%s attempt=%d feed=%d members=%d", self.id,
                 device, attempt, point.feed, len(self.points))
        return answer

    async def _offer_view(self, point: JanusPoint, attempt: int) -> None:
        """Offer the point its view leg: a subscription to the composed feed (the light one if
        its link has been poor: a rejoin after a loss keeps what its downlink carries)."""
        async with point.switching:  # a switch waits for the leg, and applies to it after
            jsep = await self._subscribe_view(point, attempt)
        if jsep is not None:
            self._bridge._offer_leg(self.id, point.device, attempt, "view", str(jsep["sdp"]))

    async def _subscribe_view(self, point: JanusPoint, attempt: int) -> Json | None:
        light = point.rendition == "light"
        publisher = self.compositor.light if light else self.compositor.full
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await publisher.published.wait()
            if point.view is not None:
                await point.view.detach()
            handle = point.view = await self._connection.attach(VIDEOROOM)
            data, jsep = await handle.message({"request": "join", "room": self.room,
                                               "ptype": "subscriber",
                                               "streams": [{"feed": publisher.feed}]})
        except (JanusApiError, TimeoutError) as exc:
            log.error("bridge_view_failed session=%s device=%s error=%s", self.id,
                      point.device, describe(exc))
            return None
        if jsep is None or point.attempt != attempt:
            return None
        point.view_mid = next((str(s["mid"]) for s in data.get("streams", [])
                               if s.get("type") == "video" and s.get("mid") is not None), "0")
        if light:
            self.compositor.want_light(point.device)
            log.info("composed_rendition session=%s device=%s to=light feed=%d reason=%s",
                     self.id, point.device, publisher.feed, "a new view leg, still poor")
        return jsep

    async def accept(self, device: str, attempt: int, leg: protocol.Leg, answer: str) -> None:
        point = self.points.get(device)
        if point is None or point.attempt != attempt or point.view is None or leg != "view":
            raise BridgeError("conflict", f"no {leg} leg offered to {device} for attempt "
                                          f"{attempt}")
        _check(answer, ["video"])
        try:
            await point.view.message({"request": "start"}, {"type": "answer", "sdp": answer})
        except JanusApiError as exc:
            raise BridgeError("bad_request", f"view answer not usable: {exc}") from None

    def _publisher_event(self, point: JanusPoint, attempt: int, event: Json) -> None:
        if point.attempt != attempt:
            return
        kind = event.get("janus")
        if kind == "webrtcup":
            self._spawn(self._subscribe(point, attempt))
        elif kind == "media" and event.get("type") == "video":
            if event.get("receiving"):
                point.silent_since = None
                self._went_live(point)
            elif point.silent_since is None:
                point.silent_since = time.monotonic()
        elif kind == "hangup" and point.state != "lost":
            self._spawn(self._lose(point, f"janus hung up: {event.get('reason', '')}"[:200]))

    async def _subscribe(self, point: JanusPoint, attempt: int) -> None:
        try:
            if point.attempt == attempt:
                await self.compositor.subscribe(point.device)
        except (JanusApiError, ValueError) as exc:
            log.error("bridge_subscribe_failed session=%s device=%s error=%s", self.id,
                      point.device, describe(exc))

    def _on_frame(self, device: str, frames: int) -> None:
        point = self.points.get(device)
        if point is not None:
            self._went_live(point)

    def _went_live(self, point: JanusPoint) -> None:
        """Janus receives the point's video, or the compositor decoded a picture of it."""
        if point.state != "connecting" or point.publisher is None:
            return
        device = point.device
        point.state = "live"
        log.info("bridge_peer_live session=%s device=%s attempt=%d after_s=%.2f", self.id,
                 device, point.attempt, time.monotonic() - point.since)
        self._bridge._peer_event(self.id, device, point.attempt, "live", "")

    def _on_speaker(self, feed: int | None) -> None:
        device = next((p.device for p in self.points.values() if p.feed == feed), None)
        if device != self.compositor.speaker:
            self.compositor.speaker = device
            self._publish_layout()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for point in list(self.points.values()):
                if point.publisher is None:
                    continue
                # Janus's word, not the compositor's pictures: a compositor short of CPU
                # decodes late, which is no reason to drop the point.
                silent = point.silent_since
                if point.state == "live" and silent is not None and \
                        now - silent > self.config.media_timeout:
                    detail = f"janus received no video for {now - silent:.1f}s"
                elif point.state == "connecting" and \
                        now - point.since > self.config.connect_timeout:
                    detail = f"not connected after {self.config.connect_timeout:g}s"
                else:
                    continue
                await self._lose(point, detail)

    async def _lose(self, point: JanusPoint, detail: str) -> None:
        if point.publisher is None:
            return
        log.warning("bridge_peer_lost session=%s device=%s attempt=%d reason=%s", self.id,
                    point.device, point.attempt, detail)
        point.state = "lost"
        await self._disconnect(point, detail)
        self._bridge._peer_event(self.id, point.device, point.attempt, "lost", detail)

    async def _disconnect(self, point: JanusPoint, why: str) -> None:
        handles = point.handles()
        point.publisher = point.audio = point.view = None
        self.compositor.release_light(point.device)  # its next view leg asks again
        await self.compositor.drop_picture(point.device)
        for handle in handles:
            await handle.hangup()
            await handle.detach()
        if handles:
            log.info("bridge_peer_closed session=%s device=%s attempt=%d why=%s", self.id,
                     point.device, point.attempt, why)

    async def leave(self, device: str) -> None:
        point = self.points.pop(device, None)
        if point is None:
            return
        await self._disconnect(point, "left")
        await self.compositor.remove(device)
        self._publish_layout()
        log.info("bridge_leave session=%s device=%s members=%d", self.id, device,
                 len(self.points))

    # -- renditions ------------------------------------------------------------------------------

    def link_report(self, device: str, qos: protocol.CallQos) -> None:
        """The point's call telemetry: move its view leg if its downlink calls for it."""
        point = self.points.get(device)
        if point is None or point.rule is None or point.view is None:
            return
        switch = point.rule.report(time.monotonic(), qos.loss_received)
        if switch is not None:
            self._spawn(self._switch(point, point.attempt, switch))

    async def _switch(self, point: JanusPoint, attempt: int, switch: Switch) -> None:
        async with point.switching:
            view = point.view
            if view is None or point.attempt != attempt:
                return  # a fresh view leg subscribes to the rule's rendition itself
            light = switch.to == "light"
            publisher = self.compositor.light if light else self.compositor.full
            if light:
                self.compositor.want_light(point.device)
            try:
                data, _ = await view.message({"request": "switch", "streams": [
                    {"feed": publisher.feed, "mid": publisher.mid, "sub_mid": point.view_mid}]})
                if not data.get("changes"):
                    raise JanusApiError(f"janus switched nothing: {str(data)[:200]}")
            except JanusApiError as exc:
                log.error("composed_rendition_failed session=%s device=%s to=%s error=%s",
                          self.id, point.device, switch.to, describe(exc))
                if light:  # it stays where it is; the rule tries again on its next reports
                    self.compositor.release_light(point.device)
                if point.rule is not None:
                    point.rule.rendition = "full" if light else "light"
                return
            # Janus asked the new source for a key frame; ask too, in case its PLI waits.
            publisher.video.request_key()
            if not light:
                self.compositor.release_light(point.device)
            log.info("composed_rendition session=%s device=%s to=%s feed=%d reason=%s",
                     self.id, point.device, switch.to, publisher.feed, switch.reason)

    def rendition(self, device: str) -> Rendition:
        point = self.points.get(device)
        return "full" if point is None else point.rendition

    def composed_bitrate(self, device: str) -> int:
        """The bit rate of the composed picture `device` receives (full or light)."""
        light = self.rendition(device) == "light"
        return self.config.light_bitrate if light else self.config.bitrate

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for point in list(self.points.values()):
            await self._disconnect(point, "session closed")
        self.points.clear()
        await self.compositor.close()
        await self.tap.close()
        for control, plugin in ((self._control, "videoroom"), (self._audio_control, "audio")):
            if control is not None:
                with contextlib.suppress(JanusApiError):
                    await control.request({"request": "destroy", "room": self.room})
                await control.detach()
                log.debug("janus_room_destroyed session=%s plugin=%s", self.id, plugin)

    # -- layout and stats ------------------------------------------------------------------------

    def layout(self) -> protocol.CallLayout:
        return self.compositor.layout()

    def _publish_layout(self) -> None:
        layout = self.layout()
        previous = self._layout
        if previous is not None and previous.tiles == layout.tiles and \
                previous.speaker == layout.speaker:
            return
        self._layout = layout
        self._bridge._layout_changed(self.id, layout)

    async def stats(self) -> dict[str, protocol.CallQos]:
        """Pictures per second the compositor decodes of each point since the last call
        (Janus's own counters stay in Janus)."""
        result = {}
        now = time.monotonic()
        for device, feed in self.compositor.feeds.items():
            frames, since = self._counted.get(device, (0, now))
            self._counted[device] = (feed.frames, now)
            if now > since and feed.frames >= frames:
                result[device] = protocol.CallQos(
                    fps_received=round((feed.frames - frames) / (now - since), 1))
        return result


class JanusBridge(Bridge[JanusSession]):
    plan: protocol.MediaPlan = "split"

    def __init__(self, config: BridgeSection) -> None:
        super().__init__()
        if not config.janus_url:
            raise ValueError("bridge.backend = \"janus\" needs bridge.janus_url")
        self.config = config
        self._connection: JanusConnection | None = None
        self._lock = asyncio.Lock()

    async def _janus(self) -> JanusConnection:
        if self._connection is None or self._connection.closed.is_set():
            connection = JanusConnection(self.config.janus_url, self.config.janus_api_secret)
            try:
                await connection.open()
            except Exception as exc:
                raise BridgeError("unavailable", f"janus unreachable at "
                                                 f"{self.config.janus_url}: {describe(exc)}") \
                    from None
            self._connection = connection
        return self._connection

    async def join(self, session_id: str, device: str, name: str, role: protocol.PointRole,
                   attempt: int, offer: str, leg: protocol.Leg = "main") -> str:
        if leg not in ("publish", "audio"):
            raise BridgeError("bad_request", f"the Janus bridge needs plan \"split\" "
                                             f"(publish and audio legs), got a {leg} leg")
        async with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                session = JanusSession(session_id, self.config, self, await self._janus())
                try:
                    await session.start()
                except (JanusApiError, ValueError) as exc:
                    await session.close()
                    raise BridgeError("unavailable", f"janus session not started: "
                                                     f"{describe(exc)}") from None
                self._sessions[session_id] = session
                self._media_started(session)
        try:
            return await session.join(device, name, role, attempt, offer, leg)
        except JanusApiError as exc:
            raise BridgeError("unavailable", f"janus: {exc}") from None

    async def accept(self, session_id: str, device: str, attempt: int, leg: protocol.Leg,
                     answer: str) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            raise BridgeError("not_found", f"no media for session {session_id}")
        await session.accept(device, attempt, leg, answer)

    def link_report(self, session_id: str, device: str, qos: protocol.CallQos) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.link_report(device, qos)

    async def close(self) -> None:
        await super().close()
        if self._connection is not None:
            await self._connection.close()


def _check(sdp: str, kinds: list[str]) -> None:
    try:
        check_sdp(sdp, "offer", kinds=kinds)
    except protocol.ProtocolError as exc:
        raise BridgeError("bad_request", str(exc)) from None


def _answer(jsep: Json | None) -> str:
    if jsep is None or not jsep.get("sdp"):
        raise BridgeError("unavailable", "janus gave no answer")
    return str(jsep["sdp"])

