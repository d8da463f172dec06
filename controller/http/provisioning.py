"""Admin API for provisioning: list, create and revoke boxes (used by `tiepdan-provision`)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tiepdan.controller.enrollment.provisioning import NewBox, Provisioning, RevokeBox
from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.body import json_body
from tiepdan.errors import BadInput, Conflict, NotFound
from tiepdan.firmware import protocol
from tiepdan.provisioning.claims import Box, ClaimRefused


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/provisioning/boxes", _list),
        web.post("/api/provisioning/boxes", _new_box),
        web.get("/api/provisioning/boxes/{id}", _box),
        web.post("/api/provisioning/boxes/{id}/revoke", _revoke),
    ]



def _provisioning(request: web.Request) -> Provisioning:
    provisioning: Provisioning = request.app[CONTROLLER_KEY].provisioning
    return provisioning



def _box_json(provisioning: Provisioning, box: Box) -> dict[str, Any]:
    data = box.to_json()
    device = provisioning.registry.get(box.device)
    data["online"] = bool(device and device.online)
    data["presence"] = device.state if device else "never seen"
    return data


@allow("admin")
async def _list(request: web.Request) -> web.Response:
    provisioning = _provisioning(request)
    return web.json_response([_box_json(provisioning, b) for b in provisioning.claims.all()])


@allow("admin")
async def _box(request: web.Request) -> web.Response:
    provisioning = _provisioning(request)
    box = provisioning.claims.get(request.match_info["id"])
    if box is None:
        raise NotFound(f"no provisioned box {request.match_info['id']!r}")
    return web.json_response(_box_json(provisioning, box))


@allow("admin")
async def _new_box(request: web.Request) -> web.Response:
    provisioning = _provisioning(request)
    wanted = protocol.convert(await json_body(request), NewBox)
    try:
        token, box = provisioning.new_box(wanted)
    except ClaimRefused as exc:
        if exc.code in ("bad_device", "bad_commune"):
            raise BadInput(str(exc)) from None
        raise Conflict(str(exc)) from None
    return web.json_response({
        "device": box.device,
        "token": token,
        "expires_at": box.token_expires,
        "provision": msgspec.to_builtins(provisioning.provision_file(box)),
        "ca": provisioning.authority().pem.decode(),
    }, status=201)


@allow("admin")
async def _revoke(request: web.Request) -> web.Response:
    provisioning = _provisioning(request)
    wanted = protocol.convert(await json_body(request), RevokeBox)
    device = protocol.check_device_id(request.match_info["id"])
    try:
        result = await provisioning.revoke(device, wanted.reason)
    except KeyError:
        raise NotFound(f"no provisioned box {device!r}") from None
    return web.json_response(msgspec.to_builtins(result))
