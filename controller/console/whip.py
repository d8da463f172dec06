"""Joining a session from a browser (or OBS, or any WHIP client) over WHIP, RFC 9725.

    POST   /whip/<session>             application/sdp offer  -> 201 answer, Location
    DELETE /whip/<session>/<resource>  leave
    PATCH  /whip/<session>/<resource>  405: the bridge takes no trickled candidates

The offer goes to the same bridge interface the boxes use (`Bridge.join`), as one more point:
every box sees the caller as a tile and hears them, and a sendrecv offer (the console's own
page) gets the composed picture and everyone's voice but the caller's own. A send-only offer
(OBS) simply receives nothing. Candidates travel in the offer (the bridge is half-trickle), so
a client waits for ICE gathering before it POSTs. The caller is a signed-in person (session
cookie and X-CSRF-Token header) or a person's API token (Authorization: Bearer).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from dataclasses import dataclass

from aiohttp import web

from tiepdan.controller.console.context import LIVE_KEY, audit, caller, controller
from tiepdan.controller.console.pages.sessions import find_session
from tiepdan.controller.http.access import allow
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.sessions.bridge import BridgeError
from tiepdan.firmware import protocol
from tiepdan.firmware.media.rtc import check_sdp

log = logging.getLogger(__name__)

JOIN = ("admin", "operator", "leader")
SDP = "application/sdp"
MAX_SDP = 32 * 1024
PREFIX = "web-"


@dataclass(frozen=True)
class Resource:
    session: str
    device: str
    user: str


class BrowserPoints:
    """Who joined which session through WHIP, so DELETE and a session's end find them."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self._attempts = itertools.count(1)

    def add(self, session: str, device: str, user: str) -> str:
        resource = secrets.token_urlsafe(12)
        self.resources[resource] = Resource(session, device, user)
        return resource

    def attempt(self) -> int:
        """Each join is a newer attempt than any before (the bridge replaces older ones)."""
        return next(self._attempts)

    def of_session(self, session: str) -> list[str]:
        return [k for k, r in self.resources.items() if r.session == session]


BROWSERS_KEY: web.AppKey[BrowserPoints] = web.AppKey("console_browser_points")


def point_id(who: Caller) -> str:
    """The tile's id for a person: web-<name>, in the device-id alphabet."""
    name = re.sub(r"[^a-z0-9-]+", "-", who.user.lower()).strip("-")[:40] or "guest"
    return PREFIX + name


async def read_offer(request: web.Request) -> str:
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(text=f"the body must be {SDP}")
    raw = await request.content.read(MAX_SDP + 1)
    if len(raw) > MAX_SDP:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_SDP, actual_size=len(raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the offer is not UTF-8 text") from None


def _video_section(sdp: str) -> list[str]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    start = next((i for i, ln in enumerate(lines) if ln.startswith("m=video")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")),
               len(lines))
    return lines[start:end]


def receives_video(sdp: str) -> bool:
    """Whether the offerer wants the bridge's picture (its video is not send-only/inactive)."""
    section = _video_section(sdp)
    return bool(section) and not any(ln in ("a=sendonly", "a=inactive") for ln in section)


def h264_first(sdp: str) -> bool:
    """The composed picture is H.264, encoded once for all: the answer must choose H.264."""
    section = _video_section(sdp)
    formats = section[0].split()[3:] if section else []
    if not formats:
        return False
    return any(ln.startswith(f"a=rtpmap:{formats[0]} ") and "H264/" in ln.upper()
               for ln in section)


@allow(*JOIN)
async def whip_post(request: web.Request) -> web.Response:
    session = find_session(request, request.match_info["session"])
    if session.state not in ("inviting", "live"):
        raise web.HTTPConflict(text=f"session {session.id} is {session.state}, not live")
    offer = await read_offer(request)
    try:
        check_sdp(offer, "offer")  # before the bridge starts composing for this session
    except protocol.ProtocolError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if receives_video(offer) and not h264_first(offer):
        raise web.HTTPBadRequest(text="the bridge sends H.264: offer H.264 first for video "
                                      "(RTCRtpTransceiver.setCodecPreferences)")
    who = caller(request)
    c = controller(request)
    browsers = request.app[BROWSERS_KEY]
    device = point_id(who)
    try:
        answer = await c.bridge.join(session.id, device, who.user, "guest", browsers.attempt(),
                                     offer)
    except BridgeError as exc:
        log.warning("whip_refused session=%s user=%s code=%s error=%s", session.id, who.user,
                    exc.code, exc)
        raise web.HTTPBadRequest(text=str(exc)) from None
    for old in [k for k, r in browsers.resources.items()
                if r.session == session.id and r.device == device]:
        del browsers.resources[old]  # replaced by this join
    resource = browsers.add(session.id, device, who.user)
    c.sessions.note(session.id, None, "browser_joined", f"user={who.user} point={device}")
    audit(request, "session.join", session.id, point=device)
    request.app[LIVE_KEY].changed(f"session:{session.id}")
    log.info("whip_joined session=%s user=%s point=%s", session.id, who.user, device)
    return web.Response(status=201, text=answer, content_type=SDP, headers={
        "Location": f"/whip/{session.id}/{resource}", "Cache-Control": "no-store"})


@allow(*JOIN)
async def whip_delete(request: web.Request) -> web.Response:
    browsers = request.app[BROWSERS_KEY]
    found = browsers.resources.get(request.match_info["resource"])
    who = caller(request)
    if found is None or found.session != request.match_info["session"] or \
            (found.user != who.user and who.role != "admin"):
        raise web.HTTPNotFound(text="no such WHIP resource")
    del browsers.resources[request.match_info["resource"]]
    c = controller(request)
    await c.bridge.leave(found.session, found.device)
    c.sessions.note(found.session, None, "browser_left", f"user={found.user}")
    request.app[LIVE_KEY].changed(f"session:{found.session}")
    return web.Response(status=200)


@allow(*JOIN)
async def whip_patch(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed("PATCH", ["DELETE"],
                                   text="no trickle ICE: send every candidate in the offer")


def routes() -> list[web.RouteDef]:
    return [
        web.post("/whip/{session}", whip_post),
        web.delete("/whip/{session}/{resource}", whip_delete),
        web.patch("/whip/{session}/{resource}", whip_patch),
    ]
