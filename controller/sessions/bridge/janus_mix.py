"""The full mix of a Janus session, for the recording at the centre, and its active speaker.

A `MixTap` joins the session's AudioBridge room as a muted participant: what AudioBridge sends
it is the mix of everybody (it has no voice of its own to subtract). Its frames go into
`mixed_audio`. The room's `talking` / `stopped-talking` events name the loudest point, which
becomes the framed tile in the composed picture.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from tiepdan.controller.sessions.bridge.janus_api import JanusApiError, JanusConnection, Json
from tiepdan.controller.sessions.bridge.janus_api import JanusHandle as Handle
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.latest import bound_decoder, bound_socket_age
from tiepdan.firmware.media.rtc import close_quietly, peer_connection

log = logging.getLogger(__name__)

MIX_TAP_ID = 1  # the tap's AudioBridge participant id


class MixTap:
    def __init__(self, session_id: str, connection: JanusConnection, room: int) -> None:
        self.session_id = session_id
        self._connection = connection
        self.room = room
        self.mixed_audio: Fanout[av.AudioFrame] = Fanout(f"mix-{session_id}")
        self.on_speaker: Callable[[int | None], None] | None = None
        self._talking: list[int] = []
        self._handle: Handle | None = None
        self._pc: RTCPeerConnection | None = None
        self._tasks: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        self._handle = await self._connection.attach("janus.plugin.audiobridge", self._event)
        pc = self._pc = peer_connection()
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")  # silence; muted anyway

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._receive(track)))

        await pc.setLocalDescription(await pc.createOffer())
        bound_socket_age(pc)
        _, jsep = await self._handle.message(
            {"request": "join", "room": self.room, "id": MIX_TAP_ID, "display": "recorder",
             "muted": True},
            {"type": "offer", "sdp": pc.localDescription.sdp})
        if jsep is None:
            raise JanusApiError("the audio bridge gave the mix tap no answer")
        bound_decoder(pc)
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))

    async def _receive(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    self.mixed_audio.publish(frame)
        except MediaStreamError:
            return

    def _event(self, event: Json) -> None:
        data = event.get("plugindata", {}).get("data", {})
        kind = data.get("audiobridge")
        if kind not in ("talking", "stopped-talking"):
            return
        feed = data.get("id")
        if not isinstance(feed, int) or feed == MIX_TAP_ID:
            return
        if feed in self._talking:
            self._talking.remove(feed)
        if kind == "talking":
            self._talking.append(feed)
        if self.on_speaker is not None:
            self.on_speaker(self._talking[-1] if self._talking else None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pc is not None:
            await close_quietly(self._pc)
        if self._handle is not None:
            await self._handle.detach()
        self.mixed_audio.close()
