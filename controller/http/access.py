"""Who may call each HTTP route: declared on the handler, checked by one middleware.

Every handler says who may call it with `@allow(...)`: role names (admin, operator,
technician, archivist, leader), "box" (a box authenticated by its TLS client certificate; the
handler learns which one from `caller(request).box`) or "public" (anyone). A route without a
declaration is denied, and an app with such a route refuses to start (`check_routes`, run on
startup), so a new route is never public by accident.

Callers are told apart by identifiers, one list per listener: the admin listener knows the
admin bearer token (role admin), the box listener the box's certificate. Refusals and
`TiepdanError`s become JSON errors here, with the status `errors.status_for` gives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from tiepdan.controller.http.errors import status_for
from tiepdan.errors import Forbidden, TiepdanError, Unauthorized
from tiepdan.firmware import protocol

log = logging.getLogger(__name__)

ROLES = frozenset({"admin", "operator", "technician", "archivist", "leader"})
BOX = "box"
PUBLIC = "public"
KNOWN = ROLES | {BOX, PUBLIC}
ATTRIBUTE = "__tiepdan_access__"


H = TypeVar("H", bound=Callable[..., Any])
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Caller:
    """Who is calling: a person or token with roles, or a box by its certificate."""

    name: str
    roles: frozenset[str] = frozenset()
    box: str | None = None  # the device id proven by the TLS client certificate

    def may(self, allowed: frozenset[str]) -> bool:
        return bool(self.roles & allowed) or (self.box is not None and BOX in allowed)


ANONYMOUS = Caller("anonymous")
CALLER_KEY: web.RequestKey[Caller] = web.RequestKey("tiepdan_caller", Caller)

# An identifier returns the caller a request proves, None when it proves nothing, and raises
# Unauthorized when it presents credentials that are wrong (a bad token is not anonymous).
Identifier = Callable[[web.Request], Awaitable[Caller | None]]


def allow(*who: str) -> Callable[[H], H]:
    """Mark a handler with who may call it (see the module docstring)."""
    if not who:
        raise ValueError("allow() needs at least one role, 'box' or 'public'")
    unknown = sorted(set(who) - KNOWN)
    if unknown:
        raise ValueError(f"allow(): unknown caller kinds {unknown}; known: {sorted(KNOWN)}")
    if PUBLIC in who and len(who) > 1:
        raise ValueError("allow('public') admits everyone; name nothing beside it")

    def mark(handler: H) -> H:
        setattr(handler, ATTRIBUTE, frozenset(who))
        return handler
    return mark


def access_of(handler: object) -> frozenset[str] | None:
    value = getattr(handler, ATTRIBUTE, None)
    return value if isinstance(value, frozenset) else None


def caller(request: web.Request) -> Caller:
    found = request.get(CALLER_KEY)
    return found if isinstance(found, Caller) else ANONYMOUS


def box_of(request: web.Request) -> str:
    """The authenticated box calling a route marked `allow('box', ...)`."""
    found = caller(request).box
    if found is None:
        raise Forbidden("only a box may call this")
    return found


class UndeclaredRoute(TiepdanError, RuntimeError):
    """The app has a route whose handler does not say who may call it."""


def check_routes(app: web.Application) -> None:
    """Refuse an app in which any route lacks an `@allow` declaration."""
    missing = [f"{route.method} {route.resource.canonical if route.resource else '?'}"
               for route in app.router.routes() if access_of(route.handler) is None]
    if missing:
        raise UndeclaredRoute("routes without an @allow declaration (who may call them): "
                              + ", ".join(sorted(missing)))


# A listener for people may answer a refusal with a page (sign in, not allowed) instead of
# JSON; None keeps the JSON answer.
Denied = Callable[[web.Request, int, TiepdanError], Awaitable[web.StreamResponse | None]]


def access_middleware(identifiers: Sequence[Identifier], listener: str,
                      denied: Denied | None = None) -> Any:
    """The one middleware: identify, check the handler's declaration, map errors."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_handler = request.match_info.handler
        if request.match_info.http_exception is not None:
            return await handler(request)  # 404 / 405 from the router
        allowed = access_of(route_handler)
        try:
            if allowed is None:
                log.error("http_route_undeclared listener=%s method=%s path=%s", listener,
                          request.method, request.path)
                raise Forbidden("this route does not say who may call it")
            if PUBLIC not in allowed:
                who = await _identify(request, identifiers)
                if who is None:
                    raise Unauthorized("authentication required")
                if not who.may(allowed):
                    raise Forbidden(f"{who.name} may not call this")
                request[CALLER_KEY] = who
            return await handler(request)
        except TiepdanError as exc:
            status = status_for(exc)
            log.warning("http_refused listener=%s method=%s path=%s status=%d code=%s "
                        "peer=%s error=%s", listener, request.method, request.path[:300], status,
                        exc.code, request.remote, exc)
            if denied is not None:
                page = await denied(request, status, exc)
                if page is not None:
                    return page
            if request.method == "HEAD":
                return web.Response(status=status, headers={protocol.ERROR_HEADER: exc.code})
            return web.json_response({"error": {"code": exc.code, "message": str(exc)},
                                      **exc.extra},
                                     status=status, headers={protocol.ERROR_HEADER: exc.code})
    return access


async def _identify(request: web.Request, identifiers: Sequence[Identifier]) -> Caller | None:
    for identify in identifiers:
        found = await identify(request)
        if found is not None:
            return found
    return None
