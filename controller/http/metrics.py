"""`/metrics` for Prometheus, on the admin listener (scrape with the admin bearer token)."""

from __future__ import annotations

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY


def routes() -> list[web.RouteDef]:
    return [web.get("/metrics", metrics)]


@allow("admin")
async def metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[CONTROLLER_KEY].metrics.render_async()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
