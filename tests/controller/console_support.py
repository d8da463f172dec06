"""A controller with people in it, boxes announced over the real broker, and a browser-like
HTTP client (cookies, CSRF tokens scraped from the page like a browser form would carry)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from argon2 import PasswordHasher

from tests.support import eventually, make_controller_config, running_controller
from tiepdan.controller.people.users import Users
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto

PASSWORD = "mat-khau-thu-nghiem"
PEOPLE = {  # name: (role, province)
    "quantri": ("admin", ""),
    "vanhanh": ("operator", "nghe-an"),
    "kythuat": ("technician", ""),
    "luutru": ("archivist", ""),
    "lanhdao": ("leader", ""),
}
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


def add_people(controller: Controller) -> None:
    users = Users(controller.db, FAST)
    controller.people.users = users
    for name, (role, province) in PEOPLE.items():
        if users.get(name) is None:
            users.add(name, role, PASSWORD, province)


async def announce(controller: Controller, device: str, province: str, commune: str,
                   kind: str = "commune") -> None:
    """A box's birth, published on the real broker as the agent would."""
    birth = protocol.Birth(seq=1, ts=protocol.now_ms(), firmware="1.0.0", board="sim",
                           boot_id="b", point=protocol.Point(
                               kind=kind, name=f"UBND {commune or province}",  # type: ignore[arg-type]
                               province=province, commune=commune), keepalive=30)
    await controller.link.publish(protocol.birth_topic(device), protocol.encode(birth),
                                  retain=True)


async def announce_all(controller: Controller, boxes: dict[str, tuple[str, str]]) -> None:
    for device, (province, commune) in boxes.items():
        await announce(controller, device, province, commune)
    await eventually(lambda: all(controller.registry.get(d) for d in boxes), 10)


@contextlib.asynccontextmanager
async def console_controller(tmp_path: Path, broker: Mosquitto,
                             **sections: Any) -> AsyncIterator[Controller]:
    sections.setdefault("console", {}).setdefault("secure_cookies", True)
    async with running_controller(make_controller_config(tmp_path, broker, **sections)) as c:
        add_people(c)
        yield c


class Browser:
    """Cookies and CSRF like a browser; `secure` cookies are sent to the loopback origin."""

    def __init__(self, controller: Controller) -> None:
        self.base = f"http://127.0.0.1:{controller.http_port}"
        jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[self.base])
        self.http = aiohttp.ClientSession(self.base, cookie_jar=jar)
        self.csrf = ""

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def login(self, name: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        async with self.http.get("/login") as form:
            found = LOGIN_CSRF.search(await form.text())
        token = found.group(1) if found else ""
        async with self.http.post("/login", data={"name": name, "password": password,
                                                  "login_csrf": token},
                                  allow_redirects=False) as reply:
            await reply.read()
            return reply

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.http.get(path, **kw) as reply:
            text = await reply.text()
            found = CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            return reply.status, text

    async def post(self, path: str, data: dict[str, str], csrf: bool = True,
                   **kw: Any) -> tuple[int, str]:
        if csrf:
            data = {**data, "csrf": self.csrf}
        async with self.http.post(path, data=data, **kw) as reply:
            text = await reply.text()
            found = CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            return reply.status, text
