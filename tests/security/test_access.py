"""Every route is denied unless it says who may call it (issue 15).

A route without `@allow` stops the controller from starting; the admin listener answers
nothing, `/api/health` included, without the admin token; the declarations on the real apps
are what the README's table says.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import init_ca, make_controller_config, running_controller
from tiepdan.controller.http.access import UndeclaredRoute, access_of, allow
from tiepdan.controller.service import Controller
from tiepdan.tools.broker import Mosquitto


async def _undeclared(request: web.Request) -> web.Response:
    return web.json_response({"secret": 42})


@pytest.mark.parametrize("listener", ["admin", "boxes"])
async def test_an_undeclared_route_stops_the_start(tmp_path: Path, broker: Mosquitto,
                                                   listener: str) -> None:
    config = make_controller_config(tmp_path, broker)
    init_ca(config)
    controller = Controller(config)
    app = controller.app if listener == "admin" else controller.boxes.app
    app.router.add_get("/api/oops" if listener == "admin" else "/oops", _undeclared)
    with pytest.raises(UndeclaredRoute, match="oops"):
        if listener == "admin":
            await controller.run()
        else:  # the box listener starts inside the running controller
            await controller.boxes.run()
    controller.archive.close()
    controller.db.close()


async def test_the_admin_listener_wants_the_token_everywhere(tmp_path: Path,
                                                            broker: Mosquitto) -> None:
    async with running_controller(make_controller_config(tmp_path, broker)) as c:
        # public routes (the console's sign-in page and its static files) say so themselves
        routes = [r for r in c.app.router.routes() if r.method in ("GET", "POST", "PUT",
                                                                   "DELETE")
                  and access_of(r.handler) != frozenset({"public"})]
        assert any(r.resource is not None and r.resource.canonical == "/api/health"
                   for r in routes)
        async with aiohttp.ClientSession() as http:
            for route in routes:
                assert route.resource is not None
                path = route.resource.canonical.replace("{action}", "pause")
                path = path.replace("{", "").replace("}", "")
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Authorization": f"Basic {c.token}"}):
                    async with http.request(route.method, c.config.api_url + path,
                                            headers=headers, allow_redirects=False) as reply:
                        # a browser without credentials is sent to sign in instead
                        to_login = reply.status == 303 and not headers and \
                            reply.headers.get("Location", "").startswith("/login")
                        assert reply.status == 401 or to_login, (route.method, path, headers)
            async with http.get(f"{c.config.api_url}/api/health",
                                headers={"Authorization": f"Bearer {c.token}"}) as reply:
                assert reply.status == 200 and (await reply.json())["ok"]


async def test_who_may_call_what(tmp_path: Path, broker: Mosquitto) -> None:
    config = make_controller_config(tmp_path, broker)
    init_ca(config)
    async with running_controller(config) as c:
        declared = {r.resource.canonical: access_of(r.handler)
                    for r in c.app.router.routes() if r.resource is not None}
        admin = {who for path, who in declared.items() if path.startswith("/api/")}
        boxes = {access_of(r.handler) for r in c.boxes.app.router.routes()}
    assert all(who for who in declared.values())
    # the JSON API is the admin's (people with other roles use the console's pages); the
    # archive's receipts and next_seq serve both: the owning box there, an admin here
    assert admin == {frozenset({"admin"}), frozenset({"box", "admin"})}
    assert not any("box" in (who or ()) for path, who in declared.items()
                   if not path.startswith("/api/archive/"))
    assert boxes == {frozenset({"box"}), frozenset({"box", "admin"})}


def test_allow_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown"):
        allow("root")
    with pytest.raises(ValueError):
        allow()
    with pytest.raises(ValueError):
        allow("public", "admin")
    marked = allow("archivist", "admin")(_undeclared)
    assert access_of(marked) == frozenset({"archivist", "admin"})
