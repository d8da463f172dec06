"""Admin API for updates (campaigns, audit, history, targets) and the OTA repository boxes read.

Boxes fetch `/ota/metadata/...` and `/ota/targets/...` from the box-facing HTTPS listener, with
their client certificate (`controller.http.boxes`): what protects a box is TUF's signature chain;
the certificate keeps the repository to enrolled boxes. Downloads support HTTP Range, for
resuming.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.controller.http.body import json_body
from tiepdan.controller.updates.campaign import spec_from_json
from tiepdan.controller.updates.service import Updates
from tiepdan.errors import BadInput, NotFound


def box_routes() -> list[web.RouteDef]:
    return [web.get("/ota/{path:.+}", _repository_file)]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/ota/campaigns", _list),
        web.post("/api/ota/campaigns", _create),
        web.get("/api/ota/campaigns/{id}", _show),
        web.post("/api/ota/campaigns/{id}/{action:pause|resume|abort}", _act),
        web.get("/api/ota/audit", _audit),
        web.get("/api/ota/history", _history),
        web.get("/api/ota/targets", _targets),
    ]


@allow("box")
async def _repository_file(request: web.Request) -> web.StreamResponse:
    """A file of the TUF repository (metadata or a bundle), with Range for resuming."""
    root = _updates(request).repository_path.resolve()
    relative = request.match_info["path"]
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or (root / relative).is_symlink() or not path.is_file():
        raise NotFound(f"no file {relative[:200]!r} in the repository")
    return web.FileResponse(path)


def _updates(request: web.Request) -> Updates:
    updates: Updates = request.app[CONTROLLER_KEY].updates
    return updates


@allow("admin")
async def _list(request: web.Request) -> web.Response:
    return web.json_response(_updates(request).campaigns.all())


@allow("admin")
async def _show(request: web.Request) -> web.Response:
    try:
        return web.json_response(_updates(request).campaigns.summary(request.match_info["id"],
                                                                     boxes=True))
    except KeyError:
        raise NotFound(f"no campaign {request.match_info['id']!r}") from None


@allow("admin")
async def _create(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict) or "spec" not in body:
        raise BadInput("expected {spec, actor, approved_by}")
    spec = spec_from_json(body["spec"])
    updates = _updates(request)
    known = {t["path"] for t in await asyncio.to_thread(updates.targets)}
    if spec.target not in known:
        raise NotFound(f"{spec.target} is not published in the repository")
    campaign = updates.campaigns.create(spec, str(body.get("actor") or "admin"),
                                        str(body.get("approved_by") or ""))
    return web.json_response(updates.campaigns.summary(campaign), status=201)


@allow("admin")
async def _act(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    campaigns = _updates(request).campaigns
    campaign, action = request.match_info["id"], request.match_info["action"]
    actor, reason = str(body.get("actor") or "admin"), str(body.get("reason") or "")
    try:
        getattr(campaigns, action)(campaign, actor, reason)
    except KeyError:
        raise NotFound(f"no campaign {campaign!r}") from None
    return web.json_response(campaigns.summary(campaign))


@allow("admin")
async def _audit(request: web.Request) -> web.Response:
    return web.json_response(_updates(request).campaigns.audit(_limit(request)))


@allow("admin")
async def _history(request: web.Request) -> web.Response:
    return web.json_response(_updates(request).campaigns.history(request.query.get("device"),
                                                                 _limit(request)))


@allow("admin")
async def _targets(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_updates(request).targets))



def _limit(request: web.Request) -> int:
    try:
        return min(int(request.query.get("limit", "200")), 10_000)
    except ValueError:
        return 200
