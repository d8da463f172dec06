"""Admin API for reception sessions (used by `tiepdan-controller session ...` and dashboards)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY, _json_body, error
from tiepdan.controller.sessions.engine import SessionError
from tiepdan.controller.sessions.schedule import parse_at

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller

STATUS = {"not_found": 404, "conflict": 409, "forbidden": 403}


def add_session_routes(app: web.Application) -> None:
    app.add_routes([
        web.get("/api/sessions", _guard(list_sessions)),
        web.post("/api/sessions", _guard(open_session)),
        web.get("/api/sessions/{id}", _guard(show_session)),
        web.post("/api/sessions/{id}/end", _guard(end_session)),
        web.delete("/api/schedules/{id}", _guard(cancel_schedule)),
    ])


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guard(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except SessionError as exc:
            return error(STATUS.get(exc.code, 400), exc.code, str(exc))
    return guarded


def _controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]


@allow("admin")
async def list_sessions(request: web.Request) -> web.Response:
    c = _controller(request)
    try:
        limit = min(int(request.query.get("limit", "100")), 10_000)
    except ValueError:
        return error(400, "bad_request", "limit must be an integer")
    sessions = c.sessions.find(request.query.get("state") or None, limit)
    return web.json_response({
        "sessions": [{**s.to_json(), "points": [p.to_json() for p in c.sessions.points(s.id)]}
                     for s in sessions],
        "schedules": [s.to_json() for s in c.schedules.all()],
    })


@allow("admin")
async def open_session(request: web.Request) -> web.Response:
    c = _controller(request)
    body: Any = await _json_body(request)
    if not isinstance(body, dict):
        return error(400, "bad_request", "body must be a JSON object")
    host, invite = body.get("host"), body.get("invite")
    if not isinstance(host, str) or not isinstance(invite, list) or \
            not all(isinstance(d, str) for d in invite):
        return error(400, "bad_request", "host (string) and invite (list of device ids) "
                                         "are required")
    title = str(body.get("title") or "")[:200]
    auto_join = bool(body.get("auto_join", False))
    if body.get("every"):
        if body.get("at"):
            return error(400, "bad_request", "give either at or every, not both")
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
        return error(404, "not_found", f"no session {request.match_info['id']!r}")
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
    from tiepdan.firmware import protocol

    return protocol.to_builtins(value)
