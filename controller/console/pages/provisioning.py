"""Provisioning: a new box (its claim token and QR label), the list, a printable sheet of
labels, and revoking a box after typing its id to confirm."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web
from markupsafe import Markup

from tiepdan.controller.console.context import audit, controller, done, form, gettext, page
from tiepdan.controller.enrollment.provisioning import NewBox, Unavailable
from tiepdan.controller.http.access import allow
from tiepdan.provisioning.claims import Box, ClaimRefused
from tiepdan.provisioning.label import Label, svg_text

MANAGE = ("admin", "technician")
SHEET_MAX = 60


def _label(box: Box) -> Markup:
    svg = svg_text(Label(box.device, box.commune, box.hall, box.province))
    return Markup(svg.split("?>", 1)[-1])


def _boxes(request: web.Request) -> list[dict[str, Any]]:
    c = controller(request)
    out = []
    for box in c.provisioning.claims.all():
        device = c.registry.get(box.device)
        out.append({"box": box, "state": box.state(),
                    "presence": device.state if device else "never seen",
                    "online": bool(device and device.online)})
    return out


def _list_context(request: web.Request, **extra: Any) -> dict[str, Any]:
    try:
        controller(request).provisioning.authority()
        ready = True
    except Unavailable:
        ready = False
    return {"boxes": _boxes(request), "ready": ready, "error": "", "entered": {},
            "issued": None, **extra}


@allow(*MANAGE)
async def provisioning_page(request: web.Request) -> web.Response:
    return page(request, "provisioning.html", **_list_context(request))


@allow(*MANAGE)
async def new_box(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    data = await form(request)
    messages = {
        "bad_commune": _("A commune hall's box needs its commune code (lowercase, digits, '-')."),
        "bad_device": _("Box id: lowercase letters, digits and '-'."),
    }
    values: dict[str, Any] = {k: data[k] for k in ("commune", "hall", "province", "kind")
                              if data.get(k)}
    values.setdefault("commune", "")
    values.setdefault("hall", "")
    if data.get("device"):
        values["device"] = data["device"]
    if data.get("days"):
        try:
            values["days"] = float(data["days"])
        except ValueError:
            values["days"] = -1
    try:
        wanted = msgspec.convert(values, NewBox)
    except msgspec.ValidationError as exc:
        field = re.search(r"\$\.(\w+)", str(exc))
        name = field.group(1) if field else ""
        message = {
            "commune": messages["bad_commune"], "device": messages["bad_device"],
            "hall": _("Write the hall's name (1 to 120 characters)."),
            "days": _("Token validity: 1 to 365 days."),
            "kind": _("Choose the kind of point."),
            "province": _("Province code: at most 16 characters."),
        }.get(name, _("Check the form: %(reason)s") % {"reason": str(exc)})
        return page(request, "provisioning.html", status=400,
                    **_list_context(request, error=message, entered=data))
    try:
        token, box = controller(request).provisioning.new_box(wanted)
    except Unavailable:
        return page(request, "provisioning.html", status=503, **_list_context(
            request, entered=data,
            error=_("No provisioning CA yet: run tiepdan-provision ca init on the server.")))
    except ClaimRefused as exc:
        message = messages.get(exc.code, _("Refused: %(reason)s") % {"reason": str(exc)})
        return page(request, "provisioning.html", status=400 if exc.code in messages else 409,
                    **_list_context(request, error=message, entered=data))
    audit(request, "provisioning.new_box", box.device, commune=box.commune, hall=box.hall)
    provision = controller(request).provisioning.provision_file(box)
    return page(request, "provisioning.html", status=201, **_list_context(
        request, issued={"box": box, "token": token, "label": _label(box),
                         "enroll_url": provision.enroll_url}))


@allow(*MANAGE)
async def sheet(request: web.Request) -> web.Response:
    """A printable page of QR labels for the chosen boxes (all not revoked by default)."""
    claims = controller(request).provisioning.claims
    wanted = [d for d in request.query.get("devices", "").split(",") if d][:SHEET_MAX]
    boxes = [b for b in (claims.get(d) for d in wanted) if b is not None] if wanted else \
        [b for b in claims.all() if b.revoked_at is None][:SHEET_MAX]
    return page(request, "labels.html", labels=[(b, _label(b)) for b in boxes])


@allow(*MANAGE)
async def revoke_form(request: web.Request) -> web.Response:
    box = controller(request).provisioning.claims.get(request.match_info["id"])
    if box is None:
        raise web.HTTPNotFound(text="no such box")
    return page(request, "revoke.html", box=box, error="")


@allow(*MANAGE)
async def revoke(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    c = controller(request)
    box = c.provisioning.claims.get(request.match_info["id"])
    if box is None:
        raise web.HTTPNotFound(text="no such box")
    data = await form(request)
    reason = data.get("reason", "")[:200]
    if data.get("confirm") != box.device:
        return page(request, "revoke.html", status=400, box=box,
                    error=_("Type the box id exactly to confirm."))
    if not reason:
        return page(request, "revoke.html", status=400, box=box,
                    error=_("Say why the box is revoked (lost, stolen, replaced…)."))
    try:
        result = await c.provisioning.revoke(box.device, reason)
    except Unavailable:
        return page(request, "revoke.html", status=503, box=box,
                    error=_("No provisioning CA yet: run tiepdan-provision ca init on the server."))
    except KeyError:
        raise web.HTTPNotFound(text="no such box") from None
    audit(request, "provisioning.revoke", box.device, reason=reason, serials=result.serials,
          broker_refuses=result.broker_refuses)
    raise done("/provisioning", "revoked")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/provisioning", provisioning_page),
        web.post("/provisioning", new_box),
        web.get("/provisioning/labels", sheet),
        web.get("/provisioning/{id}/revoke", revoke_form),
        web.post("/provisioning/{id}/revoke", revoke),
    ]
