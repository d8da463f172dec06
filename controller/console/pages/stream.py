"""The Server-Sent Events stream that keeps open pages live (`GET /live?topics=...`)."""

from __future__ import annotations

import asyncio
import contextlib
import re

from aiohttp import web

from tiepdan.controller.console.context import LIVE_KEY, caller, controller
from tiepdan.controller.http.access import allow
from tiepdan.controller.http.auth import COOKIE
from tiepdan.controller.people.roles import ROLES

TOPIC = re.compile(r"fleet|sessions|updates|session:s-[a-z0-9]{1,32}|campaign:[A-Za-z0-9_-]{1,64}")
HEARTBEAT = 15.0


@allow(*ROLES)
async def live(request: web.Request) -> web.StreamResponse:
    wanted = [t for t in request.query.get("topics", "").split(",") if t]
    if not wanted or len(wanted) > 8 or not all(TOPIC.fullmatch(t) for t in wanted):
        raise web.HTTPBadRequest(text="topics: fleet, sessions, updates, session:<id>, "
                                      "campaign:<id> (comma-separated, at most 8)")
    who = caller(request)
    if "fleet" in wanted and not who.may("fleet.view"):
        raise web.HTTPForbidden(text="your role may not watch the fleet")
    hub = request.app[LIVE_KEY]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    viewer = hub.join(who, frozenset(wanted))
    people = controller(request).people
    cookie = request.cookies.get(COOKIE, "") if who.via == "cookie" else ""
    try:
        await response.write(b"retry: 2000\n\n")
        while not hub.closed.is_set():
            try:
                async with asyncio.timeout(HEARTBEAT):
                    event, data = await viewer.queue.get()
            except TimeoutError:
                event, data = "", ""
            if cookie and not people.logins.alive(cookie):
                break  # signed out, expired or disabled: the page stops being live
            if event == "close":
                break
            if not event:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(f"event: {event}\ndata: {data}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.leave(viewer)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    return [web.get("/live", live)]
