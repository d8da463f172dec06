"""People (admin only): add someone, disable them, issue API tokens; and the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tiepdan.controller.console.context import (
    audit,
    caller,
    controller,
    done,
    form,
    gettext,
    page,
)
from tiepdan.controller.http.access import allow
from tiepdan.controller.people.roles import ROLES
from tiepdan.controller.people.users import UserError


def _people(request: web.Request, **context: Any) -> dict[str, Any]:
    people = controller(request).people
    users = people.users.all()
    return {"users": users, "roles": ROLES,
            "tokens": {u.name: people.tokens.of(u.name) for u in users},
            "error": "", "new_token": "", "entered": {}, **context}


@allow("admin")
async def people_page(request: web.Request) -> web.Response:
    return page(request, "people.html", **_people(request))


@allow("admin")
async def add_person(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    data = await form(request)
    messages = {
        "bad_name": _("User name: 2 to 32 lowercase letters, digits, '.', '_' or '-'."),
        "bad_role": _("Choose a role from the list."),
        "bad_province": _("An operator needs a province code (lowercase letters, digits, '-')."),
        "bad_password": _("A password has 10 to 256 characters."),
        "exists": _("That user name is taken."),
    }
    people = controller(request).people
    try:
        user = await asyncio.to_thread(people.users.add, data.get("name", ""),
                                       data.get("role", ""), data.get("password", ""),
                                       data.get("province", ""))
    except UserError as exc:
        entered = {k: v for k, v in data.items() if k in ("name", "role", "province")}
        return page(request, "people.html", status=400, **_people(
            request, error=messages.get(exc.code, str(exc)), entered=entered))
    audit(request, "user.add", user.name, role=user.role, province=user.province)
    raise done("/people", "added")


@allow("admin")
async def disable_person(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    people = controller(request).people
    if people.users.get(name) is None:
        raise web.HTTPNotFound(text=f"no user {name!r}")
    if name == caller(request).user:  # the last admin could lock everyone out
        _ = gettext(request)
        return page(request, "people.html", status=409, **_people(
            request, error=_("You cannot disable your own account.")))
    people.users.set_disabled(name, True)
    people.logins.end_all(name)
    audit(request, "user.disable", name)
    raise done("/people", "disabled")


@allow("admin")
async def issue_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    people = controller(request).people
    if people.users.get(name) is None:
        raise web.HTTPNotFound(text=f"no user {name!r}")
    label = (await form(request)).get("label", "")[:100]
    token, record = people.tokens.issue(name, label)
    audit(request, "token.issue", name, token=record.id, label=record.label)
    return page(request, "people.html", **_people(request, new_token=token, token_for=name))


@allow("admin")
async def audit_page(request: web.Request) -> web.Response:
    who = request.query.get("user", "").strip()[:64] or None
    entries = controller(request).people.audit.recent(500, who)
    return page(request, "audit.html", entries=entries, user=who or "")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/people", people_page),
        web.post("/people", add_person),
        web.post("/people/{name}/disable", disable_person),
        web.post("/people/{name}/token", issue_token),
        web.get("/audit", audit_page),
    ]
