"""The web console on the controller's HTTP app: pages, static files, live updates.

`add_console(app, controller)` is the one call that wires it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tiepdan.controller.console import whep, whip
from tiepdan.controller.console.context import LIVE_KEY, RENDERER_KEY, STILLS_KEY
from tiepdan.controller.console.live import LiveHub
from tiepdan.controller.console.pages import (
    archive,
    fleet,
    login,
    people,
    provisioning,
    sessions,
    stream,
    updates,
)
from tiepdan.controller.console.preview import Stills
from tiepdan.controller.console.rendering import HERE, Renderer
from tiepdan.controller.console.whep import VIEWERS_KEY, Viewers
from tiepdan.controller.console.whip import BROWSERS_KEY, BrowserPoints
from tiepdan.controller.http.access import allow
from tiepdan.controller.http.auth import DENIED_PAGE_KEY

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller
    from tiepdan.controller.sessions.engine import Session

STATIC = HERE / "static"
FILES = {"console.css": "text/css", "console.js": "text/javascript"}


@allow("public")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound()
    response = web.FileResponse(STATIC / name)
    response.content_type = FILES[name]
    response.headers["Cache-Control"] = "max-age=300"
    return response


def add_console(app: web.Application, controller: Controller) -> None:
    renderer = Renderer(controller.config.console)
    hub = LiveHub(fleet.device_row, lambda ts: renderer.when(ts, "vi"))
    controller.registry.listen(hub.on_device)
    app[RENDERER_KEY] = renderer
    app[LIVE_KEY] = hub
    app[DENIED_PAGE_KEY] = login.denied
    browsers, viewers, stills = BrowserPoints(), Viewers(), Stills()
    app[BROWSERS_KEY] = browsers
    app[VIEWERS_KEY] = viewers
    app[STILLS_KEY] = stills

    def session_changed(session: Session, _old: str | None, new: str) -> None:
        hub.changed("sessions", f"session:{session.id}")
        if new == "ended":
            for resource in browsers.of_session(session.id):
                del browsers.resources[resource]
            viewers.session_ended(session.id)
            stills.forget(session.id)

    controller.sessions.listen(session_changed)
    # Points joining, leaving or being lost, and tile changes, refresh a session's live view.
    controller.bridge.on_peer(lambda session_id, *_: hub.changed(f"session:{session_id}"))
    controller.bridge.on_layout(lambda session_id, _layout: hub.changed(f"session:{session_id}"))

    async def start(_app: web.Application) -> None:
        hub.start()

    async def stop(_app: web.Application) -> None:
        await hub.close()
        await viewers.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.router.add_get("/static/{name}", static)
    for module in (login, fleet, sessions, updates, archive, provisioning, people, stream,
                   whip, whep):
        app.add_routes(module.routes())
