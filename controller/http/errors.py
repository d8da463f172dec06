"""The one place a `TiepdanError`'s kind becomes an HTTP status (the access middleware,
`controller/http/access.py`, answers with it). Handlers raise the kind of fault (bad input, not
found, conflict ...) and never choose a status; the code travels as JSON and, since a HEAD answer
has no body, in the `protocol.ERROR_HEADER` header as well.
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
    TimedOut,
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
    TimedOut: 408,
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
