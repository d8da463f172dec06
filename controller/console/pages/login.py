"""Signing in and out, and the language switch."""

from __future__ import annotations

import logging

from aiohttp import web

from tiepdan.controller.console.context import controller, gettext, page, renderer
from tiepdan.controller.console.rendering import LANG_COOKIE, SECTIONS
from tiepdan.controller.http.access import allow
from tiepdan.controller.http.auth import CALLER, COOKIE
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.people.people import LoginRefused
from tiepdan.controller.people.roles import ROLES
from tiepdan.firmware.core.i18n import LANGUAGES

log = logging.getLogger(__name__)


def _local(path: str) -> str:
    """Only paths on this site are followed after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path \
        else "/"


@allow("public")
async def login_form(request: web.Request) -> web.Response:
    return page(request, "login.html", next=_local(request.query.get("next", "/")), error="",
                name="")


@allow("public")
async def login(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    data = await request.post()
    name, password = str(data.get("name", "")).strip()[:64], str(data.get("password", ""))
    target = _local(str(data.get("next", "/")))
    if not name or not password:
        return page(request, "login.html", status=400, next=target, name=name,
                    error=_("Enter your user name and password."))
    try:
        cookie, _login = await controller(request).people.login(name, password,
                                                                request.remote or "")
    except LoginRefused as exc:
        message = (_("Too many failed attempts. Wait a few minutes and try again.")
                   if exc.retry_after else _("Wrong user name or password."))
        response = page(request, "login.html", status=429 if exc.retry_after else 401,
                        next=target, name=name, error=message)
        if exc.retry_after:
            response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return response
    response = web.HTTPSeeOther(target)
    config = renderer(request).config
    response.set_cookie(COOKIE, cookie, httponly=True, secure=config.secure_cookies,
                        samesite="Strict", path="/", max_age=int(config.session_lifetime))
    raise response


@allow(*ROLES)
async def logout(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        controller(request).people.logins.end(cookie)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


@allow("public")
async def language(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    lang = str(data.get("lang", ""))
    if lang not in LANGUAGES:
        raise web.HTTPBadRequest(text=f"unknown language; one of {', '.join(LANGUAGES)}")
    response = web.HTTPSeeOther(_local(str(data.get("next", "/"))))
    response.set_cookie(LANG_COOKIE, lang, httponly=True, samesite="Lax", path="/",
                        max_age=365 * 86400, secure=renderer(request).config.secure_cookies)
    raise response


@allow(*ROLES)
async def home(request: web.Request) -> web.StreamResponse:
    """The first section the caller may open."""
    caller = request[CALLER]
    assert isinstance(caller, Caller)
    for path, _label, action in SECTIONS:
        if caller.may(action):
            raise web.HTTPSeeOther(path)
    raise web.HTTPForbidden()


async def denied(request: web.Request, status: int) -> web.StreamResponse:
    """The page for a refused request (wrong role, missing CSRF token)."""
    return page(request, "denied.html", status=status)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", home),
        web.get("/login", login_form),
        web.post("/login", login),
        web.post("/logout", logout),
        web.post("/lang", language),
    ]
