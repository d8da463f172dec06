"""The fleet: every box, live, filtered by province, commune and state; one box in full."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tiepdan.controller.console.context import (
    audit,
    caller,
    controller,
    form,
    gettext,
    page,
)
from tiepdan.controller.fleet.registry import Device
from tiepdan.controller.http.access import allow
from tiepdan.controller.people.caller import Caller
from tiepdan.firmware import protocol

COMMANDS = ("ping", "get-status", "collect-logs", "self-test", "restart-agent")
STATES = ("online", "offline")
FLEET_VIEW = ("admin", "operator", "technician", "leader")
FLEET_COMMAND = ("admin", "operator", "technician")


def device_row(d: Device) -> dict[str, Any]:
    """What the fleet table shows of a box (also sent live over SSE)."""
    health = d.health or {}
    return {
        "id": d.id, "name": d.name, "province": d.province, "commune": d.commune,
        "state": d.state, "online": d.online, "firmware": d.firmware,
        "cpu": health.get("cpu_percent"), "temp": health.get("cpu_temp_c"),
        "last_seen": d.last_seen,
    }


# The box page's health history: the last hour in the fine tier, or the last day in the coarse.
WINDOWS = {"hour": (3600, 10), "day": (86_400, 300)}
CHART_W, CHART_H = 600, 120
SERIES = (("cpu_percent", "cpu"), ("mem_percent", "mem"), ("cpu_temp_c", "temp"))


def health_history(request: web.Request, device: str) -> dict[str, Any]:
    """The persistent history (`controller/history/`) of one box, as a chart and a table.

    The chart is SVG drawn here: percentages and degrees share one 0-100 axis, a gap in the
    reports is a gap in the line.
    """
    window = request.query.get("history", "hour")
    span, step = WINDOWS.get(window, WINDOWS["hour"])
    until = time.time()
    since = until - span
    points = controller(request).history.query(device, since, until, step)["points"]
    lines: dict[str, list[str]] = {}
    for field, css in SERIES:
        runs: list[list[str]] = []
        last: float | None = None
        for point in points:
            value = point[field]
            if value is None:
                last = None
                continue
            if last is None or point["t"] - last > 2 * step:
                runs.append([])
            last = point["t"]
            x = (point["t"] - since) / span * CHART_W
            y = CHART_H - max(0.0, min(100.0, float(value))) / 100 * CHART_H
            runs[-1].append(f"{x:.1f},{y:.1f}")
        lines[css] = [" ".join(run) for run in runs]
    return {
        "window": window if window in WINDOWS else "hour", "windows": list(WINDOWS),
        "step": step, "width": CHART_W, "height": CHART_H, "since": since, "until": until,
        "lines": lines,
        "recent": list(reversed(points[-12:])),
    }


def visible(who: Caller, devices: list[Device]) -> list[Device]:
    return [d for d in devices if who.sees_province(d.province)]


def find_device(request: web.Request, device_id: str) -> Device:
    """The box, if it exists and the caller may see it; 404 otherwise (no existence leak)."""
    found = controller(request).registry.get(device_id)
    if found is None or not caller(request).sees_province(found.province):
        raise web.HTTPNotFound(text=f"no box {device_id!r}")
    return found


@allow(*FLEET_VIEW)
async def fleet(request: web.Request) -> web.Response:
    who = caller(request)
    devices = visible(who, controller(request).registry.devices())
    provinces = sorted({d.province for d in devices if d.province})
    communes = sorted({d.commune for d in devices if d.commune})
    province, commune = request.query.get("province", ""), request.query.get("commune", "")
    state, text = request.query.get("state", ""), request.query.get("q", "").strip().lower()
    shown = [d for d in devices
             if (not province or d.province == province)
             and (not commune or d.commune == commune)
             and (not state or (state == "online") == d.online)
             and (not text or text in d.id or text in d.name.lower())]
    return page(request, "fleet.html", rows=[device_row(d) for d in shown], total=len(devices),
                online=sum(1 for d in devices if d.online), provinces=provinces,
                communes=communes, states=STATES,
                filters={"province": province, "commune": commune, "state": state,
                         "q": request.query.get("q", "")})


@allow(*FLEET_VIEW)
async def box(request: web.Request) -> web.Response:
    d = find_device(request, request.match_info["id"])
    c = controller(request)
    return page(request, "box.html", d=d, row=device_row(d), health=d.health or {},
                history=health_history(request, d.id), events=c.registry.events(d.id, 50),
                commands=COMMANDS,
                may_command=caller(request).may("fleet.command"), result=None)


@allow(*FLEET_COMMAND)
async def command(request: web.Request) -> web.Response:
    d = find_device(request, request.match_info["id"])
    _ = gettext(request)
    name = (await form(request)).get("command", "")
    c = controller(request)
    base: dict[str, Any] = {
        "d": d, "row": device_row(d), "health": d.health or {},
        "history": health_history(request, d.id), "events": c.registry.events(d.id, 50),
        "commands": COMMANDS, "may_command": True,
    }
    if name not in COMMANDS:
        return page(request, "box.html", status=400, result={
            "ok": False, "text": _("Unknown command; choose one from the list.")}, **base)
    audit(request, "fleet.command", d.id, command=name)
    response = await c.rpc.request(d.id, name, {}, timeout=c.config.controller.command_timeout)
    data = protocol.to_builtins(response)
    return page(request, "box.html", result={"ok": bool(data.get("ok")), "name": name,
                                             "data": data}, **base)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/fleet", fleet),
        web.get("/fleet/{id}", box),
        web.post("/fleet/{id}/command", command),
    ]
