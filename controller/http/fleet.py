"""Admin API for the fleet: health, the registry, events, commands and desired state."""

from __future__ import annotations

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.body import json_body, json_object, limit
from tiepdan.errors import BadInput, NotFound
from tiepdan.firmware import protocol


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/health", health),
        web.get("/api/devices", devices),
        web.get("/api/devices/{id}", device),
        web.get("/api/events", events),
        web.get("/api/stats", stats),
        web.post("/api/devices/{id}/commands/{name}", command),
        web.put("/api/devices/{id}/desired", desired),
    ]


@allow("admin")
async def health(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    return web.json_response({"ok": True, "controller": c.id, "mqtt": c.link.connected})


@allow("admin")
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


@allow("admin")
async def devices(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    return web.json_response([d.to_json() for d in c.registry.devices()])


@allow("admin")
async def device(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    found = c.registry.get(request.match_info["id"])
    if found is None:
        raise NotFound(f"no device {request.match_info['id']!r}")
    return web.json_response({**found.to_json(), "events": c.registry.events(found.id, 20)})


@allow("admin")
async def events(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    return web.json_response(c.registry.events(request.query.get("device"), limit(request)))



@allow("admin")
async def command(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    device_id, name = request.match_info["id"], request.match_info["name"]
    protocol.check_device_id(device_id)
    protocol.command_topic(device_id, name)
    if c.registry.get(device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    args = await json_object(request)
    try:
        timeout = float(request.query.get("timeout", c.config.controller.command_timeout))
    except ValueError:
        raise BadInput("timeout must be a number") from None
    response = await c.rpc.request(device_id, name, args, timeout=min(max(timeout, 0.5), 600))
    return web.json_response(protocol.to_builtins(response))


@allow("admin")
async def desired(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    device_id = protocol.check_device_id(request.match_info["id"])
    if c.registry.get(device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    config = protocol.convert(await json_body(request), protocol.RemoteConfig)
    document = await c.set_desired(device_id, config)
    return web.json_response(protocol.to_builtins(document))
