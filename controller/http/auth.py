"""Who is calling, and may they: the HTTP app's authentication and access middleware.

A caller is a signed-in person (session cookie), a person's API token or the legacy admin token
(`Authorization: Bearer`). A route's `@allow(...)` mark says which roles may call it; routes
without a mark keep the old rule (the JSON API needs an admin) until every route declares one.
State-changing requests from a cookie session must carry its CSRF token (form field `csrf` or
header `X-CSRF-Token`); bearer callers carry no ambient credential and need none.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tiepdan.controller.http.access import allowed
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.people.logins import csrf_matches
from tiepdan.controller.people.people import People
from tiepdan.controller.people.roles import ROLES

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DeniedPage = Callable[[web.Request, int], Awaitable[web.StreamResponse]]

PEOPLE_KEY: web.AppKey[People] = web.AppKey("people")
DENIED_PAGE_KEY: web.AppKey[DeniedPage] = web.AppKey("denied_page")
CALLER: web.RequestKey[Caller] = web.RequestKey("tiepdan_caller", Caller)
COOKIE = "tiepdan_session"
# admin may call every route some person may call (not the box-only ones).
PERSON_ROLES = frozenset(ROLES)
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def caller_of(request: web.Request) -> Caller:
    """The caller the middleware resolved; only for routes that are not public."""
    found = request.get(CALLER)
    if not isinstance(found, Caller):
        raise web.HTTPUnauthorized()
    return found


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def resolve(request: web.Request, people: People) -> Caller | None:
    given = request.headers.get("Authorization", "")
    if given:
        scheme, _, token = given.partition(" ")
        return people.from_bearer(token.strip()) if scheme.lower() == "bearer" else None
    cookie = request.cookies.get(COOKIE)
    return people.from_cookie(cookie) if cookie else None


async def _denied(request: web.Request, status: int, code: str, message: str) -> \
        web.StreamResponse:
    log.warning("http_denied status=%d code=%s method=%s path=%s peer=%s", status, code,
                request.method, request.path, request.remote)
    wants_json = request.path.startswith(("/api/", "/whip/", "/whep/")) or \
        "application/json" in request.headers.get("Accept", "")
    if not wants_json:
        if status == 401 and request.method == "GET":
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/"
                                   else "/login")
        page = request.app.get(DENIED_PAGE_KEY)
        if page is not None:
            return await page(request, status)
    return _json_error(status, code, message)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    people = request.app.get(PEOPLE_KEY)
    if people is None:
        return _json_error(503, "unavailable", "the controller is starting")
    who = allowed(request.match_info.handler)
    caller = await resolve(request, people)
    if caller is not None:
        request[CALLER] = caller
    if who is None:  # undeclared route: the old rule
        if request.path.startswith("/api/") and request.path != "/api/health" and \
                (caller is None or caller.role != "admin"):
            return await _denied(request, 401, "unauthorized", "missing or wrong admin token")
        response = await handler(request)
        if caller is not None and request.method in UNSAFE and response.status < 400:
            # Changes through the JSON API (the CLIs) are attributed like the console's.
            people.audit.record(caller.user, f"api.{request.method.lower()}", request.path,
                                via=caller.via, status=response.status)
        return response
    if "public" in who:
        return await handler(request)
    if caller is None:
        return await _denied(request, 401, "unauthorized", "sign in or give an API token")
    if caller.role not in who and not (caller.role == "admin" and who & PERSON_ROLES):
        return await _denied(request, 403, "forbidden",
                             f"role {caller.role} may not call {request.method} {request.path}")
    if caller.via == "cookie" and request.method in UNSAFE:
        given = request.headers.get("X-CSRF-Token", "")
        if not given and request.content_type in ("application/x-www-form-urlencoded",
                                                   "multipart/form-data"):
            form = await request.post()
            value = form.get("csrf")
            given = value if isinstance(value, str) else ""
        if not csrf_matches(caller.csrf, given):
            return await _denied(request, 403, "csrf", "missing or wrong CSRF token; "
                                                       "reload the page and try again")
    return await handler(request)
