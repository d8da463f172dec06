"""Signing in, roles' limits, CSRF refusal, expired sessions, per-user tokens on the API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from tests.controller.console_support import (
    PASSWORD,
    Browser,
    announce_all,
    console_controller,
)
from tests.support import eventually
from tiepdan.tools.broker import Mosquitto

BOXES = {"xa-nghi-loc": ("nghe-an", "nghi-loc"), "xa-cam-xuyen": ("ha-tinh", "cam-xuyen")}


async def test_login_sets_a_hardened_cookie_and_opens_the_console(tmp_path: Path,
                                                                  broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        status, page = await b.get("/fleet")
        assert status == 200 and 'action="/login"' in page  # redirected to sign in
        assert 'lang="vi"' in page and "Đăng nhập" in page
        reply = await b.login("quantri", "wrong password!")
        assert reply.status == 401
        reply = await b.login("quantri")
        assert reply.status == 303
        [cookie] = [h for h in reply.headers.getall("Set-Cookie")
                    if h.startswith("tiepdan_session=")]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
        status, page = await b.get("/fleet")
        assert status == 200 and "Đội hộp" in page
        assert [e.action for e in c.people.audit.recent()] == ["login"]


async def test_login_without_its_form_token_is_refused(tmp_path: Path,
                                                       broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        async with b.http.post("/login", data={"name": "quantri", "password": PASSWORD},
                               allow_redirects=False) as reply:
            assert reply.status == 403  # e.g. another site posting a login form
        assert c.db.conn.execute("SELECT count(*) FROM logins").fetchone()[0] == 0
        for name, password in (("", "x"), ("quantri", ""), ("x" * 500, "y" * 5000)):
            reply = await b.login(name, password)
            assert reply.status in (400, 401)
        assert (await b.login("quantri")).status == 303


async def test_login_is_rate_limited(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker, console={"login_failures": 3}) as c, \
            Browser(c) as b:
        for _ in range(3):
            assert (await b.login("lanhdao", "not-the-password")).status == 401
        reply = await b.login("lanhdao")  # the right password, too soon
        assert reply.status == 429 and int(reply.headers["Retry-After"]) > 0


async def test_operator_sees_only_their_province(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("vanhanh")
        status, page = await b.get("/fleet")
        assert status == 200 and "xa-nghi-loc" in page and "xa-cam-xuyen" not in page
        status, _ = await b.get("/fleet/xa-cam-xuyen")
        assert status == 404
        status, _ = await b.get("/fleet/xa-nghi-loc")
        assert status == 200


async def test_state_change_without_csrf_token_is_refused(tmp_path: Path,
                                                          broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("kythuat")
        await b.get("/fleet/xa-nghi-loc")
        status, page = await b.post("/fleet/xa-nghi-loc/command", {"command": "ping"},
                                    csrf=False)
        assert status == 403 and "CSRF" not in page  # a translated page, not a stack trace
        status, _ = await b.post("/fleet/xa-nghi-loc/command", {"command": "ping",
                                                                "csrf": "forged"}, csrf=False)
        assert status == 403
        assert not [e for e in c.people.audit.recent() if e.action == "fleet.command"]


async def test_roles_limits_on_pages(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("lanhdao")
        status, _ = await b.get("/fleet")
        assert status == 200
        status, _ = await b.post("/fleet/xa-nghi-loc/command", {"command": "ping"})
        assert status == 403  # a leader may look, not command
        status, _ = await b.get("/people")
        assert status == 403


async def test_expired_session_must_sign_in_again(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await b.login("quantri")
        assert (await b.get("/fleet"))[0] == 200
        c.db.conn.execute("UPDATE logins SET seen = ?", (time.time() - 7200,))
        status, page = await b.get("/fleet")
        assert status == 200 and 'action="/login"' in page and 'value="/fleet"' in page


async def test_logout_ends_the_session(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await b.login("quantri")
        await b.get("/fleet")
        status, page = await b.post("/logout", {})
        assert status == 200 and 'action="/login"' in page
        assert c.db.conn.execute("SELECT count(*) FROM logins").fetchone()[0] == 0


async def test_person_token_on_the_api_and_the_shared_token_still_works(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c:
        await announce_all(c, BOXES)
        token, _ = c.people.tokens.issue("quantri", "cli")
        leader, _ = c.people.tokens.issue("lanhdao", "cli")
        base = f"http://127.0.0.1:{c.http_port}"
        async with aiohttp.ClientSession(base) as http:
            # a leader is known (403: not allowed here); a forged token is nobody (401)
            for given, expected in ((token, 200), (c.token, 200), (leader, 403),
                                    ("tdu_forged", 401)):
                async with http.get("/api/devices",
                                    headers={"Authorization": f"Bearer {given}"}) as reply:
                    assert reply.status == expected
            async with http.put("/api/devices/xa-nghi-loc/desired", json={"log_level": "debug"},
                                headers={"Authorization": f"Bearer {token}"}) as reply:
                assert reply.status == 200
            async with http.put("/api/devices/xa-nghi-loc/desired", json={"log_level": "nope"},
                                headers={"Authorization": f"Bearer {token}"}) as reply:
                assert reply.status == 400
        changes = [(e.user, e.action, e.target) for e in c.people.audit.recent()]
        assert changes == [("quantri", "api.put", "/api/devices/xa-nghi-loc/desired")]


async def test_fleet_is_live_over_server_sent_events(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("vanhanh")
        seen: list[dict[str, object]] = []
        async with b.http.get("/live?topics=fleet") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"

            async def read() -> None:
                event = ""
                async for raw in stream.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "devices":
                        seen.extend(json.loads(line[6:]))

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.2)
            await announce_all(c, {"xa-cam-xuyen": ("ha-tinh", "cam-xuyen"),
                                   "xa-nghi-loc": ("nghe-an", "nghi-loc")})
            await eventually(lambda: any(d["id"] == "xa-nghi-loc" for d in seen), 10)
            reader.cancel()
        assert all(d["province"] == "nghe-an" for d in seen)  # never another province


async def test_live_stream_ends_when_the_session_expires(tmp_path: Path,
                                                        broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await b.login("quantri")
        async with b.http.get("/live?topics=fleet") as stream:
            await asyncio.sleep(0.3)
            c.db.conn.execute("UPDATE logins SET seen = ?", (time.time() - 7200,))
            await announce_all(c, BOXES)  # something to send: the stream checks, then ends
            rest = await asyncio.wait_for(stream.content.read(), 10)
            assert b"xa-nghi-loc" not in rest


async def test_bad_live_topics_are_refused(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await b.login("luutru")
        assert (await b.get("/live?topics=fleet"))[0] == 403  # an archivist has no fleet view
        assert (await b.get("/live?topics=../../etc"))[0] == 400
        assert (await b.get("/live"))[0] == 400


async def test_people_page_refuses_bad_input_and_audits_additions(tmp_path: Path,
                                                                  broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await b.login("quantri")
        await b.get("/people")
        for bad, message in (
                ({"name": "X Y", "role": "leader", "password": "x" * 12}, "Tên đăng nhập"),
                ({"name": "moi", "role": "root", "password": "x" * 12}, "vai trò"),
                ({"name": "moi", "role": "operator", "password": "x" * 12}, "mã tỉnh"),
                ({"name": "moi", "role": "leader", "password": "short"}, "Mật khẩu"),
                ({"name": "lanhdao", "role": "leader", "password": "x" * 12}, "đã có")):
            status, page = await b.post("/people", bad)
            assert status == 400 and message in page, bad
        assert c.people.users.get("moi") is None
        status, page = await b.post("/people", {"name": "moi", "role": "archivist",
                                                "password": "mot-mat-khau-dai"})
        assert status == 200 and "Đã xong" in page
        status, page = await b.post("/people/moi/token", {"label": "laptop"})
        assert status == 200 and "tdu_" in page
        status, page = await b.get("/audit")
        assert "user.add" in page and "token.issue" in page
        status, page = await b.post("/people/quantri/disable", {})
        assert status == 409 and "không thể khóa" in page.lower()
        status, page = await b.post("/people/moi/disable", {})
        assert status == 200
        found = c.people.users.get("moi")
        assert found is not None and found.disabled
        actions = [(e.user, e.action, e.target) for e in c.people.audit.recent()]
        assert ("quantri", "user.add", "moi") in actions
        assert ("quantri", "token.issue", "moi") in actions


async def test_box_page_shows_health_and_its_history(tmp_path: Path, broker: Mosquitto) -> None:
    from tiepdan.firmware import protocol

    async with console_controller(tmp_path, broker) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        for cpu in (37.0, 41.0):
            health = protocol.Health(ts=protocol.now_ms() + int(cpu) * 60_000, uptime_s=10,
                                     cpu_percent=cpu, mem_percent=20, disk_free_bytes=10**9,
                                     disk_total_bytes=10**10, load1=0.2)  # no temperature
            await c.link.publish(protocol.tele_topic("xa-nghi-loc", "health"),
                                 protocol.encode(health))
            await eventually(lambda cpu=cpu: (c.registry.get("xa-nghi-loc").health or {})
                             .get("cpu_percent") == cpu, 10)  # type: ignore[union-attr]
        await b.login("kythuat")
        status, page = await b.get("/fleet/xa-nghi-loc")
        assert status == 200, page
        assert "Lịch sử tình trạng" in page and '<polyline class="cpu"' in page
        # both reports, from the persistent history: one 10 s bucket (mean / highest) or two
        assert "39% / 41%" in page or ("37% / 37%" in page and "41% / 41%" in page), page
