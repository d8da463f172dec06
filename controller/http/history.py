"""Admin API for a box's health history (the console's charts)."""

from __future__ import annotations

import time

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.errors import BadInput, NotFound


def routes() -> list[web.RouteDef]:
    return [web.get("/api/devices/{id}/history", history)]


def _number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BadInput(f"{name} must be a number (epoch seconds)") from None


@allow("admin")
async def history(request: web.Request) -> web.Response:
    """`?since=&until=` (epoch seconds, default: the last hour) and optional `step`
    (one of the configured bucket widths)."""
    c = request.app[CONTROLLER_KEY]
    device = request.match_info["id"]
    if c.registry.get(device) is None:
        raise NotFound(f"no device {device!r}")
    now = time.time()
    until = _number(request, "until", now)
    since = _number(request, "since", until - 3600)
    step = request.query.get("step")
    if step is not None and not step.isdigit():
        raise BadInput("step must be a whole number of seconds")
    return web.json_response(c.history.query(device, since, until,
                                             int(step) if step is not None else None))
