"""Reading a request's JSON body: one place, one error for what is not JSON."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tiepdan.errors import BadInput


async def json_body(request: web.Request) -> Any:
    """The decoded body, `{}` when empty; BadInput when it is not JSON."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadInput(f"body is not JSON: {exc}") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    return body


def limit(request: web.Request, default: int = 100, most: int = 10_000) -> int:
    try:
        return min(int(request.query.get("limit", str(default))), most)
    except ValueError:
        raise BadInput("limit must be an integer") from None
