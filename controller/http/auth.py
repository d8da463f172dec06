"""People on the admin listener: who a request speaks for, CSRF, the audit of API changes.

A caller is a signed-in person (session cookie), a person's API token or the legacy admin token
(`Authorization: Bearer`). `people_identifier` tells the access middleware
(`controller/http/access.py`, the one that checks every route's `@allow` and maps errors) which
roles the request carries; an admin carries every person's role, never a box's.
`people_guard` then asks state-changing requests from a cookie session for their CSRF token
(form field `csrf` or header `X-CSRF-Token`; bearer callers carry no ambient credential and
need none) and records every change made through the JSON API in the audit log.
`denied_page` answers a browser with the login page or a denial page instead of JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tiepdan.controller.http import access
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.people.logins import csrf_matches
from tiepdan.controller.people.people import People
from tiepdan.controller.people.roles import ROLES
from tiepdan.errors import Forbidden, TiepdanError, Unauthorized

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DeniedPage = Callable[[web.Request, int], Awaitable[web.StreamResponse]]

PEOPLE_KEY: web.AppKey[People] = web.AppKey("people")
DENIED_PAGE_KEY: web.AppKey[DeniedPage] = web.AppKey("denied_page")
CALLER: web.RequestKey[Caller] = web.RequestKey("tiepdan_person", Caller)
COOKIE = "tiepdan_session"
PERSON_ROLES = frozenset(ROLES)
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def caller_of(request: web.Request) -> Caller:
    """The person the request speaks for; only for routes that are not public."""
    found = request.get(CALLER)
    if not isinstance(found, Caller):
        raise Unauthorized("sign in or give an API token")
    return found


async def resolve(request: web.Request, people: People) -> Caller | None:
    given = request.headers.get("Authorization", "")
    if given:
        scheme, _, token = given.partition(" ")
        person = people.from_bearer(token.strip()) if scheme.lower() == "bearer" else None
        if person is None:
            raise Unauthorized("wrong token")  # a bad credential is not anonymity
        return person
    cookie = request.cookies.get(COOKIE)
    return people.from_cookie(cookie) if cookie else None


def people_identifier(people: People) -> access.Identifier:
    async def identify(request: web.Request) -> access.Caller | None:
        person = await resolve(request, people)
        if person is None:
            return None
        request[CALLER] = person
        roles = PERSON_ROLES if person.role == "admin" else frozenset({person.role})
        return access.Caller(person.user, roles=roles)
    return identify


@web.middleware
async def people_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    person = request.get(CALLER)
    if not isinstance(person, Caller) or request.method not in UNSAFE:
        return await handler(request)
    if person.via == "cookie":
        given = request.headers.get("X-CSRF-Token", "")
        if not given and request.content_type in ("application/x-www-form-urlencoded",
                                                   "multipart/form-data"):
            form = await request.post()
            value = form.get("csrf")
            given = value if isinstance(value, str) else ""
        if not csrf_matches(person.csrf, given):
            raise Forbidden("missing or wrong CSRF token; reload the page and try again",
                            code="csrf")
    response = await handler(request)
    if request.path.startswith("/api/") and response.status < 400:
        # Changes through the JSON API (the CLIs) are attributed like the console's.
        request.app[PEOPLE_KEY].audit.record(person.user, f"api.{request.method.lower()}",
                                             request.path, via=person.via,
                                             status=response.status)
    return response


async def denied_page(request: web.Request, status: int,
                      exc: TiepdanError) -> web.StreamResponse | None:
    """A browser is sent to sign in, or shown why not; None: answer in JSON."""
    wants_json = request.path.startswith(("/api/", "/whip/", "/whep/", "/metrics")) or \
        "application/json" in request.headers.get("Accept", "") or \
        "Authorization" in request.headers
    if wants_json or status not in (401, 403):
        return None
    if status == 401 and request.method == "GET":
        raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/"
                               else "/login")
    page = request.app.get(DENIED_PAGE_KEY)
    return None if page is None else await page(request, status)
