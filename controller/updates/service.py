"""The controller's update feature: serves the TUF repository, keeps its timestamp fresh,
runs the campaign engine and exposes campaigns in the admin API.

Boxes fetch `/ota/metadata/...` and `/ota/targets/...` from the box-facing HTTPS listener,
with their client certificate (`controller.http.boxes`): what protects a box is TUF's signature
chain, but there is no reason to hand bundles to anyone else. Downloads support HTTP Range, for
resuming.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tiepdan.controller.http.access import allow
from tiepdan.controller.http.app import CONTROLLER_KEY, _json_body, error
from tiepdan.controller.updates.campaign import CampaignError, Campaigns, spec_from_json
from tiepdan.ota.keys import ONLINE_ROLES, KeyFileError
from tiepdan.ota.repository import Keyring, RepositoryError, UpdateRepository

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller

log = logging.getLogger(__name__)


class Updates:
    def __init__(self, controller: Controller) -> None:
        config = controller.config
        ota = config.ota
        self.controller = controller
        self.repository_path = Path(ota.repository or config.data_dir / "ota" / "repository")
        self.keys = Path(ota.keys or config.data_dir / "ota" / "keys")
        self.refresh_interval = ota.refresh_interval
        self.campaigns = Campaigns(
            controller, lambda: ota.public_url or f"{controller.boxes.url}/ota", tick=ota.tick)
        self.repository_path.mkdir(parents=True, exist_ok=True)
        controller.boxes.app.add_routes([web.get("/ota/{path:.+}", _repository_file)])
        controller.app.add_routes([
            web.get("/api/ota/campaigns", _list),
            web.post("/api/ota/campaigns", _create),
            web.get("/api/ota/campaigns/{id}", _show),
            web.post("/api/ota/campaigns/{id}/{action:pause|resume|abort}", _act),
            web.get("/api/ota/audit", _audit),
            web.get("/api/ota/history", _history),
            web.get("/api/ota/targets", _targets),
        ])
        controller.spawn(self.campaigns.run(), "ota-campaigns")
        controller.spawn(self._refresh_loop(), "ota-refresh")

    async def _refresh_loop(self) -> None:
        """Re-sign snapshot and timestamp with the online keys before they expire."""
        while True:
            try:
                repo = UpdateRepository(self.repository_path, Keyring.from_dirs(
                    self.keys, roles=ONLINE_ROLES))  # the controller holds only these
                if repo.initialised:
                    done = await asyncio.to_thread(repo.refresh)
                    if done:
                        log.info("ota_metadata_refreshed roles=%s", ",".join(done))
            except (RepositoryError, KeyFileError, OSError) as exc:
                log.error("ota_refresh_failed error=%s", exc)
            await asyncio.sleep(self.refresh_interval)


@allow("box")
async def _repository_file(request: web.Request) -> web.StreamResponse:
    """A file of the TUF repository (metadata or a bundle), with Range for resuming."""
    root = _updates(request).repository_path.resolve()
    relative = request.match_info["path"]
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or (root / relative).is_symlink() or not path.is_file():
        return error(404, "not_found", f"no file {relative[:200]!r} in the repository")
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
        return error(404, "not_found", f"no campaign {request.match_info['id']!r}")


@allow("admin")
async def _create(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict) or "spec" not in body:
        return error(400, "bad_request", "expected {spec, actor, approved_by}")
    spec = spec_from_json(body["spec"])
    updates = _updates(request)
    known = {t["path"] for t in await asyncio.to_thread(_target_list, updates)}
    if spec.target not in known:
        return error(404, "not_found", f"{spec.target} is not published in the repository")
    try:
        campaign = updates.campaigns.create(spec, str(body.get("actor") or "admin"),
                                            str(body.get("approved_by") or ""))
    except CampaignError as exc:
        return error(409, "conflict", str(exc))
    return web.json_response(updates.campaigns.summary(campaign), status=201)


@allow("admin")
async def _act(request: web.Request) -> web.Response:
    body = await _json_body(request) or {}
    campaigns = _updates(request).campaigns
    campaign, action = request.match_info["id"], request.match_info["action"]
    actor, reason = str(body.get("actor") or "admin"), str(body.get("reason") or "")
    try:
        getattr(campaigns, action)(campaign, actor, reason)
    except KeyError:
        return error(404, "not_found", f"no campaign {campaign!r}")
    except CampaignError as exc:
        return error(409, "conflict", str(exc))
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
    return web.json_response(await asyncio.to_thread(_target_list, _updates(request)))


def _target_list(updates: Updates) -> list[dict[str, Any]]:
    repo = UpdateRepository(updates.repository_path)
    return repo.targets_list() if repo.initialised else []


def _limit(request: web.Request) -> int:
    try:
        return min(int(request.query.get("limit", "200")), 10_000)
    except ValueError:
        return 200
