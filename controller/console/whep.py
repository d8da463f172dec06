"""Watching a session without being in it, over WHEP: the composed picture and the full mix.

    POST   /whep/<session>             application/sdp (receive-only) offer -> 201 answer
    DELETE /whep/<session>/<resource>  stop watching

A viewer is no tile and no voice: it subscribes to the bridge session's `composed_video` (the
one encoded picture every point receives) and `mixed_audio`, both part of the bridge interface,
so it works whatever backend composes them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from tiepdan.controller.console.context import audit, controller
from tiepdan.controller.console.pages.sessions import find_session
from tiepdan.controller.console.whip import SDP, h264_first, read_offer
from tiepdan.controller.http.access import allow
from tiepdan.firmware import protocol
from tiepdan.firmware.media.rtc import (
    LIVE_AUDIO_QUEUE,
    LIVE_VIDEO_QUEUE,
    FrameTrack,
    PacketTrack,
    check_sdp,
    close_quietly,
    describe,
    on_keyframe_request,
    peer_connection,
    prefer_h264,
)

log = logging.getLogger(__name__)

WATCH = ("admin", "operator", "leader", "archivist")
MAX_VIEWERS = 200


class Viewers:
    def __init__(self) -> None:
        self.peers: dict[str, tuple[str, RTCPeerConnection]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def session_ended(self, session: str) -> None:
        """Close the session's viewers soon (from a synchronous listener)."""
        task = asyncio.get_running_loop().create_task(self.close_session(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_session(self, session: str) -> None:
        for key in [k for k, (s, _) in self.peers.items() if s == session]:
            _, pc = self.peers.pop(key)
            await close_quietly(pc)

    async def close(self) -> None:
        peers, self.peers = self.peers, {}
        await asyncio.gather(*(close_quietly(pc) for _, pc in peers.values()))


VIEWERS_KEY: web.AppKey[Viewers] = web.AppKey("console_viewers")


@allow(*WATCH)
async def whep_post(request: web.Request) -> web.Response:
    session = find_session(request, request.match_info["session"])
    media = controller(request).bridge.session(session.id)
    if media is None:
        raise web.HTTPConflict(text="no media yet: nobody has joined this session")
    viewers = request.app[VIEWERS_KEY]
    if len(viewers.peers) >= MAX_VIEWERS:
        raise web.HTTPServiceUnavailable(text="too many viewers")
    offer = await read_offer(request)
    try:
        check_sdp(offer, "offer")
    except protocol.ProtocolError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if not h264_first(offer):
        raise web.HTTPBadRequest(text="the bridge sends H.264: offer H.264 first for video")
    pc = peer_connection()
    resource = secrets.token_urlsafe(12)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        pc.addTrack(PacketTrack(media.composed_video.subscribe(f"whep-{resource}",
                                                               capacity=LIVE_VIDEO_QUEUE)))
        pc.addTrack(FrameTrack("audio", media.mixed_audio.subscribe(
            f"whep-{resource}", capacity=LIVE_AUDIO_QUEUE)))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                prefer_h264(transceiver)
                on_keyframe_request(transceiver.sender, media.composed_video.request_key)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await close_quietly(pc)
        raise web.HTTPBadRequest(text=f"offer not usable: {describe(exc)}") from None
    viewers.peers[resource] = (session.id, pc)

    @pc.on("connectionstatechange")
    async def gone() -> None:
        if pc.connectionState in ("failed", "closed") and resource in viewers.peers:
            viewers.peers.pop(resource, None)
            await close_quietly(pc)

    audit(request, "session.watch", session.id)
    return web.Response(status=201, text=str(pc.localDescription.sdp), content_type=SDP,
                        headers={"Location": f"/whep/{session.id}/{resource}",
                                 "Cache-Control": "no-store"})


@allow(*WATCH)
async def whep_delete(request: web.Request) -> web.Response:
    viewers = request.app[VIEWERS_KEY]
    found = viewers.peers.get(request.match_info["resource"])
    if found is None or found[0] != request.match_info["session"]:
        raise web.HTTPNotFound(text="no such WHEP resource")
    del viewers.peers[request.match_info["resource"]]
    await close_quietly(found[1])
    return web.Response(status=200)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/whep/{session}", whep_post),
        web.delete("/whep/{session}/{resource}", whep_delete),
    ]
