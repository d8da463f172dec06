"""The sessions pages: calendar, create / edit / cancel, invite by province or commune, limits."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.controller.console_support import Browser, announce_all, console_controller
from tiepdan.tools.broker import Mosquitto

BOXES = {
    "tinh-nghe-an": ("nghe-an", ""),
    "xa-nghi-loc": ("nghe-an", "nghi-loc"),
    "xa-dien-chau": ("nghe-an", "dien-chau"),
    "xa-cam-xuyen": ("ha-tinh", "cam-xuyen"),
}
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def _tomorrow_at_nine() -> tuple[str, dt.datetime]:
    day = dt.datetime.now(ZONE).date() + dt.timedelta(days=1)
    moment = dt.datetime.combine(day, dt.time(9, 0), ZONE)
    return moment.strftime("%Y-%m-%dT%H:%M"), moment


async def test_leader_schedules_invites_a_province_changes_and_cancels(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("lanhdao")
        await b.get("/sessions/new")
        at, moment = _tomorrow_at_nine()
        status, page = await b.post("/sessions", {
            "title": "Tiếp dân định kỳ", "host": "tinh-nghe-an", "province": "nghe-an",
            "at": at})
        assert status == 200, page
        [session] = c.sessions.find("scheduled")
        assert session.starts_at == moment.timestamp()  # read in Vietnam time
        invited = {p.device for p in c.sessions.points(session.id) if p.role == "guest"}
        assert invited == {"xa-nghi-loc", "xa-dien-chau"}  # the province, not the host
        assert "Tiếp dân định kỳ" in page and "đã lên lịch" in page
        status, page = await b.get(f"/sessions?week={moment.date().isoformat()}")
        assert status == 200
        assert "09:00 Tiếp dân định kỳ" in page
        assert moment.strftime("%d/%m") in page
        # change it: one commune only, an hour later
        await b.get(f"/sessions/{session.id}/edit")
        later = (moment + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        status, page = await b.post(f"/sessions/{session.id}/edit", {
            "title": "Tiếp dân", "host": "tinh-nghe-an", "commune": "nghi-loc", "at": later})
        assert status == 200, page
        [replacement] = c.sessions.find("scheduled")
        assert replacement.id != session.id
        assert {p.device for p in c.sessions.points(replacement.id) if p.role == "guest"} == \
            {"xa-nghi-loc"}
        old = c.sessions.get(session.id)
        assert old is not None and old.state == "ended"
        status, page = await b.post(f"/sessions/{replacement.id}/end", {})
        assert status == 200
        assert c.sessions.find("scheduled") == []
        actions = [e.action for e in c.people.audit.recent()]
        assert {"session.open", "session.edit", "session.cancel"} <= set(actions)


async def test_every_session_form_field_refuses_bad_input(tmp_path: Path,
                                                          broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("quantri")
        await b.get("/sessions/new")
        at, _ = _tomorrow_at_nine()
        cases = [
            ({"host": "", "devices": "xa-nghi-loc"}, "Hãy chọn hộp chủ trì"),
            ({"host": "no-such-box", "devices": "xa-nghi-loc"}, "Hãy chọn hộp chủ trì"),
            ({"host": "tinh-nghe-an"}, "Hãy mời ít nhất một điểm cầu"),
            ({"host": "tinh-nghe-an", "devices": "xa-nghi-loc nope"}, "Không có hộp: nope"),
            ({"host": "tinh-nghe-an", "devices": "xa-nghi-loc", "at": "mai"},
             "Không hiểu thời gian"),
            ({"host": "tinh-nghe-an", "devices": "xa-nghi-loc", "every": "sometimes"},
             "Không hiểu lịch lặp lại"),
            ({"host": "tinh-nghe-an", "devices": "xa-nghi-loc", "every": "THU 08:00",
              "at": at}, "không ghi cả hai"),
        ]
        for data, message in cases:
            status, page = await b.post("/sessions", data)
            assert status == 400 and message in page, (data, status)
            if "devices" in data:
                assert f'value="{data["devices"]}"' in page  # what was typed is kept
        assert c.sessions.find() == []
        assert c.schedules.all() == []


async def test_operator_cannot_reach_another_province(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        foreign = await c.sessions.open("xa-cam-xuyen", ["xa-nghi-loc"], title="Hà Tĩnh",
                                        at=dt.datetime.now(ZONE).timestamp() + 86400)
        await b.login("vanhanh")
        status, page = await b.get("/sessions")
        assert status == 200 and foreign.id not in page
        assert (await b.get(f"/sessions/{foreign.id}"))[0] == 404
        status, _ = await b.post(f"/sessions/{foreign.id}/end", {})
        assert status == 404
        status, page = await b.post("/sessions", {"host": "xa-cam-xuyen",
                                                  "devices": "xa-nghi-loc"})
        assert status == 400
        status, page = await b.post("/sessions", {"host": "xa-nghi-loc",
                                                  "devices": "xa-cam-xuyen"})
        assert status == 400 and "xa-cam-xuyen" in page
        assert not re.search(r'<option value="xa-cam-xuyen"', page)
        assert len(c.sessions.find()) == 1


async def test_archivist_and_technician_cannot_open_sessions(tmp_path: Path,
                                                             broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("luutru")
        assert (await b.get("/sessions"))[0] == 403
        await b.get("/archive")
        status, _ = await b.post("/sessions", {"host": "tinh-nghe-an", "province": "nghe-an"})
        assert status == 403
        assert c.sessions.find() == []


async def test_a_regular_reception_day_fills_the_calendar(tmp_path: Path,
                                                          broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("lanhdao")
        await b.get("/sessions/new")
        status, page = await b.post("/sessions", {
            "title": "Tiếp dân hằng ngày", "host": "tinh-nghe-an", "commune": "nghi-loc",
            "every": "DAILY 08:00"})
        assert status == 200, page
        [schedule] = c.schedules.all()
        [session] = c.sessions.find("scheduled")  # only the next occurrence exists
        status, page = await b.get("/sessions")
        assert page.count(f'href="/sessions/{session.id}"') >= 2  # list and calendar
        # the later days show the regular occurrences, not yet sessions
        now = dt.datetime.now(ZONE)
        monday = now.date() - dt.timedelta(days=now.weekday())
        ahead = [d for d in (monday + dt.timedelta(n) for n in range(14))
                 if dt.datetime.combine(d, dt.time(8), ZONE) > now]
        assert page.count("Tiếp dân hằng ngày <small>(định kỳ)</small>") == len(ahead) - 1
        status, page = await b.post(f"/schedules/{schedule.id}/cancel", {})
        assert status == 200 and "định kỳ)" not in page
        assert c.sessions.find("scheduled") == []


async def test_the_session_page_shows_what_each_camera_sends(tmp_path: Path,
                                                             broker: Mosquitto) -> None:
    """Adaptive bitrate: the box's call telemetry (target, picture) beside its point."""
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        session = await c.sessions.open("tinh-nghe-an", ["xa-nghi-loc"])
        c.registry.set_extra("xa-nghi-loc", "call", {"session": session.id, "state": "live"})
        c.registry.set_extra("xa-nghi-loc", "call_qos", {
            "kbps_sent": 281.0, "target_kbps": 183.1, "video_width": 212, "video_height": 120,
            "video_fps": 10})
        # Telemetry of another session says nothing about this one.
        c.registry.set_extra("tinh-nghe-an", "call", {"session": "s-other", "state": "live"})
        c.registry.set_extra("tinh-nghe-an", "call_qos", {"target_kbps": 600.0})
        await b.login("lanhdao")
        status, page = await b.get(f"/sessions/{session.id}")
        assert status == 200, page
        assert "camera 183 kbit/s, 212\u00d7120, 10 khung/giây" in page
        assert page.count('data-field="sending"') == 1
