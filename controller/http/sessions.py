"""Admin API for reception sessions (used by `tiepdan-controller session ...` and dashboards)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.body import json_object, limit
from tiepdan.controller.sessions.schedule import parse_at
from tiepdan.errors import BadInput, NotFound
from tiepdan.firmware import protocol

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/sessions", list_sessions),
        web.post("/api/sessions", open_session),
        web.get("/api/sessions/{id}", show_session),
        web.post("/api/sessions/{id}/end", end_session),
        web.delete("/api/schedules/{id}", cancel_schedule),
    ]


def _controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]


@allow("admin")
async def list_sessions(request: web.Request) -> web.Response:
    c = _controller(request)
    sessions = c.sessions.find(request.query.get("state") or None, limit(request))
    return web.json_response({
        "sessions": [{**s.to_json(), "points": [p.to_json() for p in c.sessions.points(s.id)]}
                     for s in sessions],
        "schedules": [s.to_json() for s in c.schedules.all()],
    })


@allow("admin")
async def open_session(request: web.Request) -> web.Response:
    c = _controller(request)
    body = await json_object(request)
    host, invite = body.get("host"), body.get("invite")
    if not isinstance(host, str) or not isinstance(invite, list) or \
            not all(isinstance(d, str) for d in invite):
        raise BadInput("host (string) and invite (list of device ids) are required")
    title = str(body.get("title") or "")[:200]
    auto_join = bool(body.get("auto_join", False))
    if body.get("every"):
        if body.get("at"):
            raise BadInput("give either at or every, not both")
        schedule = await c.schedules.add(str(body["every"]), host, invite, title=title,
                                         auto_join=auto_join)
        return web.json_response({"schedule": schedule.to_json(),
                                  "session": c.sessions.describe(schedule.next_session or "")},
                                 status=201)
    at = parse_at(str(body["at"]), c.config.sessions.timezone) if body.get("at") else None
    session = await c.sessions.open(host, invite, title=title, at=at, auto_join=auto_join)
    return web.json_response({"session": c.sessions.describe(session.id)}, status=201)


@allow("admin")
async def show_session(request: web.Request) -> web.Response:
    c = _controller(request)
    found = c.sessions.describe(request.match_info["id"])
    if found is None:
        raise NotFound(f"no session {request.match_info['id']!r}")
    media = c.bridge.session(request.match_info["id"])
    if media is not None:
        found["bridge_qos"] = {d: _builtins(q) for d, q in (await media.stats()).items()}
    return web.json_response(found)


@allow("admin")
async def end_session(request: web.Request) -> web.Response:
    c = _controller(request)
    session = await c.sessions.end(request.match_info["id"], "admin")
    return web.json_response({"session": session.to_json()})


@allow("admin")
async def cancel_schedule(request: web.Request) -> web.Response:
    c = _controller(request)
    schedule = await c.schedules.cancel(request.match_info["id"])
    return web.json_response({"schedule": schedule.to_json()})


def _builtins(value: object) -> Any:
    return protocol.to_builtins(value)
