"""Signing in and out, and the language switch."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from aiohttp import web

from tiepdan.controller.console.context import controller, gettext, page, renderer
from tiepdan.controller.console.rendering import LANG_COOKIE, SECTIONS
from tiepdan.controller.http.access import allow
from tiepdan.controller.http.auth import CALLER, COOKIE
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.people.logins import csrf_matches
from tiepdan.controller.people.people import LoginRefused
from tiepdan.controller.people.roles import ROLES
from tiepdan.firmware.core.i18n import LANGUAGES

log = logging.getLogger(__name__)


def _local(path: str) -> str:
    """Only paths on this site are followed after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path \
        else "/"


LOGIN_CSRF = "tiepdan_login_csrf"


def _login_page(request: web.Request, status: int = 200, **context: Any) -> web.Response:
    """The sign-in form with a fresh pre-session CSRF token (cookie and form field must match,
    so another site cannot sign a browser in to an account of its choosing)."""
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", status=status, login_csrf=token, **context)
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="Strict", path="/login",
                        secure=renderer(request).config.secure_cookies, max_age=3600)
    return response


@allow("public")
async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, next=_local(request.query.get("next", "/")), error="", name="")


@allow("public")
async def login(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    data = await request.post()
    name, password = str(data.get("name", "")).strip()[:64], str(data.get("password", ""))
    target = _local(str(data.get("next", "/")))
    if not csrf_matches(request.cookies.get(LOGIN_CSRF, ""), str(data.get("login_csrf", ""))):
        log.warning("login_csrf_refused peer=%s", request.remote)
        return _login_page(request, status=403, next=target, name=name,
                           error=_("The form had expired. Please sign in again."))
    if not name or not password:
        return _login_page(request, status=400, next=target, name=name,
                           error=_("Enter your user name and password."))
    try:
        cookie, _login = await controller(request).people.login(name, password,
                                                                request.remote or "")
    except LoginRefused as exc:
        message = (_("Too many failed attempts. Wait a few minutes and try again.")
                   if exc.retry_after else _("Wrong user name or password."))
        response = _login_page(request, status=429 if exc.retry_after else 401,
                               next=target, name=name, error=message)
        if exc.retry_after:
            response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return response
    response = web.HTTPSeeOther(target)
    response.del_cookie(LOGIN_CSRF, path="/login")
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
