"""Updates: the published bundles, campaigns with waves, live progress per wave, pause / resume /
abort, and each box's update history. Technicians may look; only admins start or steer."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tiepdan.controller.console.context import (
    LIVE_KEY,
    audit,
    caller,
    controller,
    done,
    form,
    form_list,
    gettext,
    page,
)
from tiepdan.controller.http.access import allow
from tiepdan.controller.updates.campaign import CampaignError, Selector, Wave, spec_from_json
from tiepdan.firmware import protocol

VIEW = ("admin", "technician")
ACTIONS = ("pause", "resume", "abort")


async def _targets(request: web.Request) -> list[dict[str, Any]]:
    return await asyncio.to_thread(controller(request).updates.targets)


def _progress(summary: dict[str, Any]) -> dict[str, Any]:
    """Per wave: boxes, finished (succeeded or failed) and the share done, for the bars."""
    for wave in summary["waves"]:
        states = wave["states"]
        finished = sum(n for s, n in states.items()
                       if s in ("succeeded", "failed", "rolled_back", "withdrawn"))
        wave["finished"] = finished
        wave["done_percent"] = round(100 * finished / wave["boxes"]) if wave["boxes"] else 0
    return summary


@allow(*VIEW)
async def updates_page(request: web.Request) -> web.Response:
    c = controller(request)
    campaigns = [_progress(s) for s in c.updates.campaigns.all()]
    devices = c.registry.devices()
    return page(request, "updates.html", targets=await _targets(request), campaigns=campaigns,
                provinces=sorted({d.province for d in devices if d.province}),
                may_manage=_may_manage(request), error="", entered={})


def _may_manage(request: web.Request) -> bool:
    return caller(request).may("updates.manage")


def _waves(text: str, max_failure: float) -> list[Wave]:
    shares = [float(v) for v in text.replace(",", " ").split()] if text.strip() else [100.0]
    if any(not 0 < s <= 100 for s in shares) or shares != sorted(shares) or shares[-1] != 100:
        raise ValueError("waves")
    return [Wave(percent=s, max_failure_percent=max_failure) for s in shares]


@allow("admin")
async def create(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    data = await form(request)
    c = controller(request)
    targets = await _targets(request)
    by_path = {t["path"]: t for t in targets}

    async def refuse(message: str) -> web.Response:
        devices = c.registry.devices()
        return page(request, "updates.html", status=400, targets=targets,
                    campaigns=[_progress(s) for s in c.updates.campaigns.all()],
                    provinces=sorted({d.province for d in devices if d.province}),
                    may_manage=True, error=message, entered=data)

    target = data.get("target", "")
    if target not in by_path:
        return await refuse(_("Choose a published bundle."))
    version = data.get("version", "") or str(by_path[target].get("version", ""))
    if not version:
        return await refuse(_("Give the version the bundle installs."))
    try:
        max_failure = float(data.get("max_failure", "10") or "10")
        if not 0 <= max_failure <= 100:
            raise ValueError("max_failure")
    except ValueError:
        return await refuse(_("Failure limit: a percentage from 0 to 100."))
    try:
        waves = _waves(data.get("waves", ""), max_failure)
    except ValueError:
        return await refuse(_("Waves: rising percentages ending at 100, e.g. 5 25 100."))
    selector = Selector(province=data.get("province") or None,
                        communes=form_list(data, "communes") or None)
    try:
        spec = spec_from_json({
            "target": target, "version": version, "name": data.get("name", "")[:120],
            "selector": protocol.to_builtins(selector), "waves": protocol.to_builtins(waves)})
        campaign = c.updates.campaigns.create(spec, caller(request).user)
    except (protocol.ProtocolError, CampaignError) as exc:
        return await refuse(_("The campaign was refused: %(reason)s") % {"reason": str(exc)})
    request.app[LIVE_KEY].changed("updates")
    audit(request, "campaign.create", campaign, bundle=target, version=version,
          waves=[w.percent for w in waves])
    raise done(f"/updates/{campaign}", "created")


@allow(*VIEW)
async def campaign_page(request: web.Request) -> web.Response:
    c = controller(request)
    try:
        summary = _progress(c.updates.campaigns.summary(request.match_info["id"], boxes=True))
    except KeyError:
        raise web.HTTPNotFound(text="no such campaign") from None
    return page(request, "campaign.html", k=summary, may_manage=_may_manage(request), error="")


@allow("admin")
async def act(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    campaign, action = request.match_info["id"], request.match_info["action"]
    reason = (await form(request)).get("reason", "")[:200]
    c = controller(request)
    try:
        getattr(c.updates.campaigns, action)(campaign, caller(request).user, reason)
    except KeyError:
        raise web.HTTPNotFound(text="no such campaign") from None
    except CampaignError as exc:
        summary = _progress(c.updates.campaigns.summary(campaign, boxes=True))
        return page(request, "campaign.html", status=409, k=summary, may_manage=True,
                    error=_("Not possible now: %(reason)s") % {"reason": str(exc)})
    audit(request, f"campaign.{action}", campaign, reason=reason)
    request.app[LIVE_KEY].changed("updates", f"campaign:{campaign}")
    raise done(f"/updates/{campaign}", action)


@allow(*VIEW)
async def history(request: web.Request) -> web.Response:
    device = request.query.get("device", "").strip()[:64]
    rows = controller(request).updates.campaigns.history(device or None, 300)
    return page(request, "update_history.html", rows=rows, device=device)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/updates", updates_page),
        web.post("/updates", create),
        web.get("/updates/history", history),
        web.get("/updates/{id}", campaign_page),
        web.post("/updates/{id}/{action:pause|resume|abort}", act),
    ]
