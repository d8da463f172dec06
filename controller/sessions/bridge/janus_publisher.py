"""One encoded rendition of the composed picture, published into a session's VideoRoom.

The compositor encodes; this only carries the packets (an aiortc send-only peer that
packetizes them) as a VideoRoom publisher with a fixed feed id, so points' view legs can
subscribe to it, or be switched onto it. Janus forwards the viewers' PLIs to this publisher,
where they ask the rendition's encoder for a key frame (`Fanout.request_key`).
"""

from __future__ import annotations

import asyncio
import logging

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from av.stream import Stream

from tiepdan.controller.sessions.bridge.janus_api import JanusApiError, JanusConnection, Json
from tiepdan.controller.sessions.bridge.janus_api import JanusHandle as Handle
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.rtc import (
    LIVE_MAX_AGE_S,
    LIVE_VIDEO_QUEUE,
    PacketTrack,
    close_quietly,
    on_keyframe_request,
    peer_connection,
    prefer_h264,
)

log = logging.getLogger(__name__)


class JanusPublisher:
    """Publishes `video` as feed `feed` ("display" `name`) in `room`."""

    def __init__(self, session_id: str, name: str, feed: int,
                 video: Fanout[av.Packet[Stream]]) -> None:
        self.session_id = session_id
        self.name = name
        self.feed = feed
        self.video = video
        self.mid = "0"  # the publisher stream's mid in Janus, which a switch names
        self.published = asyncio.Event()  # Janus has the feed (webrtcup)
        self._handle: Handle | None = None
        self._pc: RTCPeerConnection | None = None

    async def start(self, connection: JanusConnection, room: int) -> None:
        """Publish; returns once Janus has answered (`published` follows at webrtcup)."""
        self._handle = await connection.attach("janus.plugin.videoroom", self._event)
        pc = self._pc = peer_connection()
        track = PacketTrack(self.video.subscribe("janus", capacity=LIVE_VIDEO_QUEUE,
                                                 max_age=LIVE_MAX_AGE_S))
        transceiver = pc.addTransceiver(track, direction="sendonly")
        prefer_h264(transceiver)
        on_keyframe_request(transceiver.sender, self.video.request_key)
        await pc.setLocalDescription(await pc.createOffer())
        data, jsep = await self._handle.message(
            {"request": "joinandconfigure", "room": room, "ptype": "publisher",
             "id": self.feed, "display": self.name, "audio": False, "video": True},
            {"type": "offer", "sdp": pc.localDescription.sdp})
        if jsep is None:
            raise JanusApiError(f"janus published the {self.name} feed without an answer")
        self.mid = next((str(s["mid"]) for s in data.get("streams", [])
                         if s.get("type") == "video" and s.get("mid") is not None), self.mid)
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))

    def _event(self, event: Json) -> None:
        if event.get("janus") == "webrtcup":
            self.published.set()
        elif event.get("janus") == "hangup":
            self.published.clear()
            log.error("janus_publisher_hangup session=%s feed=%s reason=%s", self.session_id,
                      self.name, event.get("reason"))

    async def close(self) -> None:
        if self._pc is not None:
            await close_quietly(self._pc)
        if self._handle is not None:
            await self._handle.detach()
        self.video.close()
