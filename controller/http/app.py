"""The controller's admin HTTP application: the access middleware, then every feature's routes.

Its own listener (`[http]`, loopback by default; put a TLS proxy in front to open the console
to people), apart from the box-facing one (`controller/http/boxes.py`). Every route says who
may call it (`access.allow`) and an app with an undeclared route refuses to start. Callers are
people (`controller/http/auth.py`: session cookie, a person's API token, or the admin bearer
token that the controller writes, mode 0600, into its data directory on first start). Errors
become statuses in `controller/http/errors.py`, nowhere else.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tiepdan.controller.http.access import access_middleware, check_routes
from tiepdan.controller.http.auth import (
    PEOPLE_KEY,
    denied_page,
    people_guard,
    people_identifier,
)
from tiepdan.controller.people.people import People

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller

log = logging.getLogger(__name__)

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


def build_app(controller: Controller, people: People,
              routes: Iterable[web.AbstractRouteDef]) -> web.Application:
    app = web.Application(
        middlewares=[access_middleware([people_identifier(people)], "admin", denied_page),
                     people_guard],
        client_max_size=MAX_BODY)
    app[CONTROLLER_KEY] = controller
    app[PEOPLE_KEY] = people
    app.on_startup.append(_check_routes)
    app.add_routes(routes)
    return app


async def _check_routes(app: web.Application) -> None:
    check_routes(app)
