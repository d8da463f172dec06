"""Reception sessions: a two-week calendar, create / edit / cancel, invite by province or
commune, the live view of one session (each point's state and quality, the composed picture),
and ending it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from aiohttp import web

from tiepdan.controller.console.context import (
    STILLS_KEY,
    audit,
    caller,
    controller,
    done,
    form,
    form_list,
    gettext,
    page,
    renderer,
)
from tiepdan.controller.console.pages.fleet import visible
from tiepdan.controller.console.preview import NoPicture
from tiepdan.controller.http.access import allow
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.sessions.engine import Session
from tiepdan.controller.sessions.schedule import Schedule, parse_at, recurrence
from tiepdan.controller.sessions.schedule import zone as zone_of
from tiepdan.errors import BadInput, NotFound, TiepdanError
from tiepdan.firmware import protocol

VIEW = ("admin", "operator", "leader")
MANAGE = ("admin", "operator", "leader")
ACTIVE = ("scheduled", "inviting", "live")


def _sees(who: Caller, request: web.Request, session: Session) -> bool:
    """An operator sees the sessions their province's boxes chair."""
    if who.role != "operator":
        return True
    host = controller(request).registry.get(session.host)
    return host is not None and who.sees_province(host.province)


def find_session(request: web.Request, session_id: str) -> Session:
    found = controller(request).sessions.get(session_id)
    if found is None or not _sees(caller(request), request, found):
        raise web.HTTPNotFound(text=f"no session {session_id!r}")
    return found


def _calendar(request: web.Request, sessions: list[Session], schedules: list[Schedule],
              start: dt.date, days: int = 14) -> list[dict[str, Any]]:
    """Each day's sessions, and the regular reception days' later occurrences (which exist
    as sessions only once the one before has started)."""
    zone = renderer(request).zone
    today = dt.datetime.now(zone).date()
    by_day: dict[dt.date, list[Session]] = {start + dt.timedelta(d): [] for d in range(days)}
    regular: dict[dt.date, list[tuple[float, Schedule]]] = {d: [] for d in by_day}
    for s in sessions:
        when = s.starts_at or s.started or s.created
        day = dt.datetime.fromtimestamp(when, zone).date()
        if day in by_day:
            by_day[day].append(s)
    first = dt.datetime.combine(start, dt.time(0), zone)
    last = first + dt.timedelta(days=days)
    for schedule in schedules:
        exists = {s.starts_at for s in sessions if s.schedule == schedule.id}
        try:
            rule = recurrence(schedule.every, zone_of(schedule.timezone), first)
        except TiepdanError:
            continue
        for moment in rule.between(first, last, inc=True):
            if moment.timestamp() not in exists and moment.timestamp() > time.time():
                regular[moment.date()].append((moment.timestamp(), schedule))
    return [{"date": day, "ts": dt.datetime.combine(day, dt.time(12), zone).timestamp(),
             "today": day == today,
             "sessions": sorted(items, key=lambda s: s.starts_at or s.created),
             "regular": sorted(regular[day], key=lambda r: r[0])}
            for day, items in by_day.items()]


def _form_context(request: web.Request, **extra: Any) -> dict[str, Any]:
    devices = visible(caller(request), controller(request).registry.devices())
    return {"devices": devices,
            "provinces": sorted({d.province for d in devices if d.province}),
            "communes": sorted({(d.province, d.commune) for d in devices if d.commune}),
            "error": "", "entered": {}, **extra}


@allow(*VIEW)
async def sessions_page(request: web.Request) -> web.Response:
    c, who = controller(request), caller(request)
    zone = renderer(request).zone
    try:
        week = dt.date.fromisoformat(request.query["week"]) if "week" in request.query else \
            dt.datetime.now(zone).date()
    except ValueError:
        week = dt.datetime.now(zone).date()
    start = week - dt.timedelta(days=week.weekday())
    sessions = [s for s in c.sessions.find(None, 2000) if _sees(who, request, s)]
    schedules = [s for s in c.schedules.all() if s.active and (
        who.role != "operator" or _sees(who, request, Session(
            s.id, s.title, s.host, "scheduled", s.auto_join, s.id, None, s.created, None, None,
            None)))]
    return page(request, "sessions.html",
                calendar=_calendar(request, sessions, schedules, start),
                active=sorted((s for s in sessions if s.state in ACTIVE),
                              key=lambda s: s.starts_at or s.started or s.created),
                schedules=schedules,
                previous=(start - dt.timedelta(days=7)).isoformat(),
                following=(start + dt.timedelta(days=7)).isoformat(),
                may_manage=who.may("sessions.manage"), **_form_context(request))


def _invitees(request: web.Request, data: dict[str, str], host: str) -> list[str]:
    """Invite by province, by commune and by box id; only boxes the caller may see."""
    who = caller(request)
    devices = visible(who, controller(request).registry.devices())
    known = {d.id for d in devices}
    chosen: list[str] = []
    province, commune = data.get("province", ""), data.get("commune", "")
    if province:
        chosen += [d.id for d in devices if d.province == province]
    if commune:
        chosen += [d.id for d in devices if d.commune == commune]
    for device in form_list(data, "devices"):
        if device not in known:
            raise NotFound(device)
        chosen.append(device)
    return [d for d in dict.fromkeys(chosen) if d != host]


async def _create(request: web.Request, data: dict[str, str]) -> Session:
    _ = gettext(request)
    c, who = controller(request), caller(request)
    host = data.get("host", "")
    found = c.registry.get(host)
    if found is None or not who.sees_province(found.province):
        raise BadInput(_("Choose the chairing box."))
    try:
        invite = _invitees(request, data, host)
    except TiepdanError as exc:
        raise BadInput(_("Unknown box: %(id)s") % {"id": str(exc)}) from None
    if not invite:
        raise BadInput(_("Invite at least one point: a province, a commune "
                                            "or box ids."))
    title = data.get("title", "")[:200]
    auto_join = data.get("auto_join") == "on"
    when, every = data.get("at", ""), data.get("every", "")
    if when and every:
        raise BadInput(_("Give either a time or a repetition, not both."))
    if every:
        try:
            schedule = await c.schedules.add(every, host, invite, title=title,
                                             auto_join=auto_join)
        except TiepdanError:
            raise BadInput(_("Repetition not understood; write for "
                                                "example THU 08:00 or MON,THU 14:30.")) from None
        session = c.sessions.get(schedule.next_session or "")
        assert session is not None
        return session
    at = None
    if when:
        try:
            at = parse_at(when, renderer(request).config.timezone)
        except TiepdanError:
            raise BadInput(_("Time not understood; use the date and time "
                                                "fields.")) from None
    return await c.sessions.open(host, invite, title=title, at=at, auto_join=auto_join)


@allow(*MANAGE)
async def create(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    try:
        session = await _create(request, data)
    except TiepdanError as exc:
        return page(request, "session_form.html", status=400, **_form_context(
            request, error=str(exc), entered=data, editing=None))
    audit(request, "session.open", session.id, host=session.host, state=session.state,
          title=session.title)
    raise done(f"/sessions/{session.id}", "opened")


@allow(*MANAGE)
async def new_form(request: web.Request) -> web.Response:
    return page(request, "session_form.html", **_form_context(request, editing=None))


@allow(*MANAGE)
async def edit_form(request: web.Request) -> web.Response:
    session = find_session(request, request.match_info["id"])
    points = controller(request).sessions.points(session.id)
    entered = {"title": session.title, "host": session.host,
               "devices": " ".join(p.device for p in points if p.role == "guest"),
               "at": _local_input(request, session.starts_at),
               "auto_join": "on" if session.auto_join else ""}
    return page(request, "session_form.html", **_form_context(request, editing=session,
                                                              entered=entered))


def _local_input(request: web.Request, ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, renderer(request).zone).strftime("%Y-%m-%dT%H:%M")


@allow(*MANAGE)
async def edit(request: web.Request) -> web.StreamResponse:
    """A scheduled session is changed by replacing it: the old one ends as rescheduled."""
    _ = gettext(request)
    session = find_session(request, request.match_info["id"])
    data = await form(request)
    if session.state != "scheduled":
        return page(request, "session_form.html", status=409, **_form_context(
            request, editing=session, entered=data,
            error=_("Only a session that has not started can be changed.")))
    data.pop("every", None)
    try:
        replacement = await _create(request, data)
    except TiepdanError as exc:
        return page(request, "session_form.html", status=400, **_form_context(
            request, error=str(exc), entered=data, editing=session))
    await controller(request).sessions.end(session.id, f"rescheduled as {replacement.id}")
    audit(request, "session.edit", session.id, replacement=replacement.id)
    raise done(f"/sessions/{replacement.id}", "changed")


@allow(*MANAGE)
async def end(request: web.Request) -> web.StreamResponse:
    session = find_session(request, request.match_info["id"])
    try:
        await controller(request).sessions.end(session.id, f"ended by {caller(request).user}")
    except TiepdanError as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    audit(request, "session.end" if session.state != "scheduled" else "session.cancel",
          session.id)
    raise done(f"/sessions/{session.id}", "ended")


@allow(*MANAGE)
async def cancel_schedule(request: web.Request) -> web.StreamResponse:
    c = controller(request)
    schedule = c.schedules.get(request.match_info["id"])
    if schedule is None or not schedule.active:
        raise web.HTTPNotFound(text="no such repetition")
    host = c.registry.get(schedule.host)
    if host is not None and not caller(request).sees_province(host.province):
        raise web.HTTPNotFound(text="no such repetition")
    await c.schedules.cancel(schedule.id)
    audit(request, "schedule.cancel", schedule.id)
    raise done("/sessions", "cancelled")


@allow(*VIEW)
async def session_page(request: web.Request) -> web.Response:
    session = find_session(request, request.match_info["id"])
    c = controller(request)
    media = c.bridge.session(session.id)
    qos: dict[str, Any] = {}
    if media is not None:
        qos = {d: protocol.to_builtins(q) for d, q in (await media.stats()).items()}
    points = c.sessions.points(session.id)
    names = {p.device: getattr(c.registry.get(p.device), "name", "") for p in points}
    # What each box's camera sends now (adaptive bitrate), from its own call telemetry.
    sending = {p.device: _sending(c.registry.get(p.device), session.id) for p in points}
    who = caller(request)
    return page(request, "session.html", s=session, points=points, names=names, qos=qos,
                sending={d: v for d, v in sending.items() if v},
                log=c.sessions.history(session.id)[-30:], media=media is not None,
                may_manage=who.may("sessions.manage"), may_join=who.may("sessions.join"))


@allow(*VIEW)
async def preview_image(request: web.Request) -> web.Response:
    session = find_session(request, request.match_info["id"])
    media = controller(request).bridge.session(session.id)
    if media is None:
        raise web.HTTPNotFound(text="this session has no media on the bridge")
    try:
        picture = await request.app[STILLS_KEY].of(media)
    except NoPicture:
        raise web.HTTPServiceUnavailable(text="no composed picture yet") from None
    return web.Response(body=picture, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/sessions", sessions_page),
        web.get("/sessions/new", new_form),
        web.post("/sessions", create),
        web.get("/sessions/{id}", session_page),
        web.get("/sessions/{id}/edit", edit_form),
        web.get("/sessions/{id}/preview.jpg", preview_image),
        web.post("/sessions/{id}/edit", edit),
        web.post("/sessions/{id}/end", end),
        web.post("/schedules/{id}/cancel", cancel_schedule),
    ]


def _sending(device: Any, session_id: str) -> dict[str, Any] | None:
    """The box's latest call telemetry for this session, if it says what the camera sends."""
    if device is None:
        return None
    call = device.extra.get("call") or {}
    qos = device.extra.get("call_qos") or {}
    if call.get("session") != session_id or qos.get("target_kbps") is None:
        return None
    return dict(qos)
