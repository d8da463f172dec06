"""The one place a `TiepdanError` becomes an HTTP answer: status by kind, code and extras as JSON.

Handlers raise the kind of fault (bad input, not found, conflict ...) and never choose a status;
a HEAD answer has no body, so the code travels in the `protocol.ERROR_HEADER` header as well.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tiepdan.errors import (
    BadInput,
    Conflict,
    Corrupt,
    Forbidden,
    NotFound,
    OutOfRange,
    TiepdanError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from tiepdan.firmware import protocol

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Most specific first: the first kind in an error's MRO that is listed here decides.
STATUS: dict[type[TiepdanError], int] = {
    TooLarge: 413,
    OutOfRange: 416,
    Corrupt: 422,
    BadInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}


def status_for(exc: TiepdanError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers={protocol.ERROR_HEADER: code})


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TiepdanError as exc:
        status = status_for(exc)
        log.warning("http_refused method=%s path=%s status=%d code=%s peer=%s error=%s",
                    request.method, request.path[:200], status, exc.code, request.remote, exc)
        if request.method == "HEAD":
            return web.Response(status=status, headers={protocol.ERROR_HEADER: exc.code})
        return web.json_response({"error": {"code": exc.code, "message": str(exc)}, **exc.extra},
                                 status=status, headers={protocol.ERROR_HEADER: exc.code})
