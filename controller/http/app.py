"""The controller's admin HTTP API (JSON), used by the CLIs and the demo's fleet table.

It listens on loopback by default and every call needs the admin bearer token that the
controller writes (mode 0600) into its data directory on first start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tiepdan.controller.http.auth import auth
from tiepdan.firmware import protocol

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


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def build_app(controller: Controller, token: str) -> web.Application:
    @web.middleware
    async def protocol_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except protocol.ProtocolError as exc:
            return error(400, "bad_request", str(exc))

    # auth: callers (session cookie, per-user token, the admin token) and @allow marks.
    app = web.Application(middlewares=[auth, protocol_errors], client_max_size=MAX_BODY)
    app[CONTROLLER_KEY] = controller
    app.add_routes([
        web.get("/api/health", health),
        web.get("/api/devices", devices),
        web.get("/api/devices/{id}", device),
        web.get("/api/events", events),
        web.get("/api/stats", stats),
        web.post("/api/devices/{id}/commands/{name}", command),
        web.put("/api/devices/{id}/desired", desired),
    ])
    return app


async def health(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    return web.json_response({"ok": True, "controller": c.id, "mqtt": c.link.connected})


async def stats(request: web.Request) -> web.Response:
    """Counters for monitoring: messages received per kind, rejected, devices online."""
    c = request.app[CONTROLLER_KEY]
    devices = c.registry.devices()
    return web.json_response({
        "received": dict(c.ingest.received),
        "rejected": c.ingest.rejected,
        "devices": len(devices),
        "online": sum(1 for d in devices if d.online),
    })


async def devices(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    return web.json_response([d.to_json() for d in c.registry.devices()])


async def device(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    found = c.registry.get(request.match_info["id"])
    if found is None:
        return error(404, "not_found", f"no device {request.match_info['id']!r}")
    return web.json_response({**found.to_json(), "events": c.registry.events(found.id, 20)})


async def events(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    try:
        limit = min(int(request.query.get("limit", "100")), 10_000)
    except ValueError:
        return error(400, "bad_request", "limit must be an integer")
    return web.json_response(c.registry.events(request.query.get("device"), limit))


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise protocol.ProtocolError(f"body is not JSON: {exc}") from None


async def command(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    device_id, name = request.match_info["id"], request.match_info["name"]
    protocol.check_device_id(device_id)
    protocol.command_topic(device_id, name)
    if c.registry.get(device_id) is None:
        return error(404, "not_found", f"no device {device_id!r}")
    args = await _json_body(request)
    if not isinstance(args, dict):
        return error(400, "bad_request", "command arguments must be a JSON object")
    try:
        timeout = float(request.query.get("timeout", c.config.controller.command_timeout))
    except ValueError:
        return error(400, "bad_request", "timeout must be a number")
    response = await c.rpc.request(device_id, name, args, timeout=min(max(timeout, 0.5), 600))
    return web.json_response(protocol.to_builtins(response))


async def desired(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    device_id = protocol.check_device_id(request.match_info["id"])
    if c.registry.get(device_id) is None:
        return error(404, "not_found", f"no device {device_id!r}")
    config = protocol.convert(await _json_body(request), protocol.RemoteConfig)
    document = await c.set_desired(device_id, config)
    return web.json_response(protocol.to_builtins(document))
