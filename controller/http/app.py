"""The controller's one HTTP application: middlewares, then every feature's routes.

The admin API listens on loopback by default and every `/api/` call needs the admin bearer
token that the controller writes (mode 0600) into its data directory on first start. Errors are
mapped to statuses by `errors.errors`, nowhere else.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tiepdan.controller.http.errors import errors
from tiepdan.errors import Unauthorized

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024

CONTROLLER_KEY: web.AppKey[Controller] = web.AppKey("controller")


def admin_token(path: Path) -> str:
    """Read the admin token, creating it on first start."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token


def build_app(controller: Controller, token: str,
              routes: Iterable[web.AbstractRouteDef]) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/") and request.path != "/api/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                log.warning("api_unauthorized path=%s peer=%s", request.path[:200],
                            request.remote)
                raise Unauthorized("missing or wrong admin token")
        return await handler(request)

    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[CONTROLLER_KEY] = controller
    app.add_routes(routes)
    return app
