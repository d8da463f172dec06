"""What every console page needs from a request: the controller, the renderer, the caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tiepdan.controller.console.rendering import Renderer
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.auth import caller_of
from tiepdan.controller.people.caller import Caller

if TYPE_CHECKING:
    from tiepdan.controller.console.live import LiveHub
    from tiepdan.controller.console.preview import Stills
    from tiepdan.controller.service import Controller

RENDERER_KEY: web.AppKey[Renderer] = web.AppKey("console_renderer")
LIVE_KEY: web.AppKey[LiveHub] = web.AppKey("console_live")
STILLS_KEY: web.AppKey[Stills] = web.AppKey("console_stills")

MAX_FIELD = 2000


def controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]


def renderer(request: web.Request) -> Renderer:
    return request.app[RENDERER_KEY]


def caller(request: web.Request) -> Caller:
    return caller_of(request)


def gettext(request: web.Request) -> Callable[[str], str]:
    return renderer(request).gettext(request)


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return renderer(request).render(request, template, status=status,
                                    done=request.query.get("done", ""), **context)


def audit(request: web.Request, action: str, target: str, **detail: Any) -> None:
    """Record a change or an export in the append-only audit log, attributed to the caller."""
    who = caller(request)
    controller(request).people.audit.record(who.user, action, target, via=who.via,
                                            peer=request.remote or "", **detail)


async def form(request: web.Request) -> dict[str, str]:
    """The submitted form as plain strings (files and over-long values are refused)."""
    data = await request.post()
    result: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise web.HTTPBadRequest(text=f"field {key!r} must be text")
        if len(value) > MAX_FIELD:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FIELD, actual_size=len(value))
        result[key] = value.strip()
    return result


def form_list(request_form: dict[str, str], key: str) -> list[str]:
    """A comma- or space-separated field as a list."""
    return [v for v in request_form.get(key, "").replace(",", " ").split() if v]


def done(path: str, code: str) -> web.HTTPSeeOther:
    """Redirect after a successful change (POST/redirect/GET), naming what was done."""
    sep = "&" if "?" in path else "?"
    return web.HTTPSeeOther(f"{path}{sep}done={code}")
