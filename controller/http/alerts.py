"""Admin API: the alerts the controller raised (the console's alert list)."""

from __future__ import annotations

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.body import limit
from tiepdan.errors import BadInput


def routes() -> list[web.RouteDef]:
    return [web.get("/api/alerts", alerts)]


@allow("admin")
async def alerts(request: web.Request) -> web.Response:
    """`?state=firing` (default) or `all` (resolved ones too, newest first), `limit`."""
    state = request.query.get("state", "firing")
    if state not in ("firing", "all"):
        raise BadInput("state must be firing or all")
    c = request.app[CONTROLLER_KEY]
    return web.json_response(c.alerts.list(state == "firing", limit(request)))
