"""Screenshots of every console page, in Vietnamese, for people to look at (docs/screens/).

    .venv/bin/python -m tests.controller.screens docs/screens

A real broker, controller, bridge, two simulated boxes in a live session with the leader
joined from Chromium, a signed bundle and campaign, an archive, a provisioning CA: the pages
show what they show in use. It lives with the tests because it reuses their fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

from tests.controller.console_support import PASSWORD, add_people, announce
from tests.ota.harness import build_variants, make_repository
from tests.recording.ver_support import SESSION, build_archive
from tests.sessions.points import BRIDGE, points
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.controller.enrollment.provisioning import NewBox, material_for
from tiepdan.controller.history.history import History
from tiepdan.controller.updates.campaign import CampaignSpec, Wave
from tiepdan.provisioning.material import initialise
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.chromium import Chromium, write_tone, write_y4m

FLEET = {  # a few provinces' halls, most of them online
    "tinh-nghe-an": ("nghe-an", "", "UBND tỉnh Nghệ An"),
    "xa-nghi-loc": ("nghe-an", "nghi-loc", "UBND xã Nghi Lộc"),
    "xa-dien-chau": ("nghe-an", "dien-chau", "UBND xã Diễn Châu"),
    "xa-hung-nguyen": ("nghe-an", "hung-nguyen", "UBND xã Hưng Nguyên"),
    "xa-cam-xuyen": ("ha-tinh", "cam-xuyen", "UBND xã Cẩm Xuyên"),
    "xa-thach-ha": ("ha-tinh", "thach-ha", "UBND xã Thạch Hà"),
}


async def shoot(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, \
            mock.patch("aioice.ice.get_host_addresses",
                       lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]):
        tmp = Path(tmp_name)
        archive = build_archive(tmp / "a")
        bundle = build_variants(tmp / "bundles", ["good"])["good"]
        repo = make_repository(tmp / "ota")
        repo.add_bundle(bundle)
        with Mosquitto(tmp / "broker") as broker:
            config = make_controller_config(
                tmp, broker, bridge=BRIDGE, sessions={"invite_timeout": 5.0},
                controller={"data_dir": str(archive.data_dir)},
                ota={"repository": str(repo.path), "keys": str(tmp / "ota" / "keys")})
            initialise(material_for(config), controller="central", hosts=["127.0.0.1"],
                       broker_port=broker.port, cert_days=30, crl_days=30)
            camera, mic = tmp / "leader.y4m", tmp / "leader.wav"
            write_y4m(camera, "Lãnh đạo tỉnh")
            write_tone(mic, 1160.0)
            async with running_controller(config) as c, \
                    points(tmp, broker, ["pt-host", "pt-1"]) as agents, \
                    Chromium(tmp, camera=camera, microphone=mic) as browser:
                add_people(c)
                for device, (province, commune, name) in FLEET.items():
                    await announce(c, device, province, commune,
                                   kind="province" if not commune else "commune")
                    del name
                await eventually(lambda: all(c.registry.get(d) for d in FLEET), 10)
                for device, (_p, _c, name) in FLEET.items():
                    found = c.registry.get(device)
                    assert found is not None
                    found.name = name
                zone = ZoneInfo("Asia/Ho_Chi_Minh")
                today = dt.datetime.now(zone).date()
                for days, hour, title, invite in (
                        (1, 8, "Tiếp công dân định kỳ", ["xa-nghi-loc", "xa-dien-chau"]),
                        (3, 14, "Đối thoại với nhân dân", ["xa-hung-nguyen"]),
                        (8, 8, "Tiếp công dân định kỳ", ["xa-nghi-loc", "xa-dien-chau"])):
                    at = dt.datetime.combine(today + dt.timedelta(days=days), dt.time(hour), zone)
                    await c.sessions.open("tinh-nghe-an", invite, title=title,
                                          at=at.timestamp())
                await c.schedules.add("THU 08:00", "tinh-nghe-an", ["xa-nghi-loc"],
                                      title="Ngày tiếp dân thứ Năm")
                live = await c.sessions.open("pt-host", ["pt-1"], title="Tiếp dân trực tuyến",
                                             auto_join=True)
                await eventually(lambda: all(a.call.state == "live" for a in agents.values()),
                                 30)
                seed_health(c.history, "pt-1")
                c.updates.campaigns.create(CampaignSpec(
                    target=bundle.name, version="1.1.0", name="Bản 1.1.0",
                    waves=[Wave(5.0), Wave(25.0), Wave(100.0)], download_jitter=0.0), "quantri")
                token, box = c.provisioning.new_box(NewBox(
                    commune="hung-nguyen", hall="UBND xã Hưng Nguyên", province="nghe-an"))
                c.provisioning.new_box(NewBox(commune="thach-ha", hall="UBND xã Thạch Hà",
                                              province="ha-tinh"))
                c.people.tokens.issue("quantri", "máy tính xách tay")
                base = f"http://127.0.0.1:{c.http_port}"
                await browser.get(f"{base}/login")
                await browser.screenshot(out / "01-dang-nhap.png")
                await browser.login(base, "quantri", PASSWORD)
                await browser.get(f"{base}/sessions/{live.id}")
                await browser.click("join-button")
                await eventually(lambda: _frames(browser), 30)
                await asyncio.sleep(2)
                pages = [
                    ("02-doi-hop", "/fleet"),
                    ("03-hop", "/fleet/pt-1"),
                    ("04-phien", "/sessions"),
                    ("05-phien-moi", "/sessions/new"),
                    ("07-cap-nhat", "/updates"),
                    ("08-dot-cap-nhat", f"/updates/{c.updates.campaigns.all()[0]['id']}"),
                    ("09-lich-su-cap-nhat", "/updates/history"),
                    ("10-luu-tru", "/archive"),
                    ("11-phien-luu-tru", f"/archive/{SESSION}/verify"),
                    ("12-cap-phat", "/provisioning"),
                    ("13-nhan-qr", "/provisioning/labels"),
                    ("14-thu-hoi", f"/provisioning/{box.device}/revoke"),
                    ("15-nguoi-dung", "/people"),
                    ("16-nhat-ky", "/audit"),
                ]
                await full_page(browser, out / "06-phien-truc-tiep.png")
                for name, path in pages:
                    await browser.get(base + path)
                    await full_page(browser, out / f"{name}.png")
                for name, path in (("20-dien-thoai-doi-hop", "/fleet"),
                                   ("21-dien-thoai-phien", "/sessions")):
                    await browser.get(base + path)
                    await full_page(browser, out / f"{name}.png", width=390)
                del token


def seed_health(history: History, device: str) -> None:
    """An hour of a box's reports for the box page's chart: idle, then a call warms it."""
    now = time.time()
    for k in range(360):
        busy = k > 220
        history.add(device, {
            "cpu_percent": (55 if busy else 12) + 6 * math.sin(k / 7),
            "mem_percent": 31 + (9 if busy else 0) + math.sin(k / 17),
            "cpu_temp_c": (61 if busy else 48) + 2 * math.sin(k / 11), "load1": 0.4,
            "disk_free_bytes": 21 * 10**9 - k * 10**6, "disk_total_bytes": 29 * 10**9,
        }, at=now - (360 - k) * 10)
    history.flush()


async def _frames(browser: Chromium) -> bool:
    return bool(await browser.js("return window.tiepdanJoin && window.tiepdanJoin.frames"))


async def full_page(browser: Chromium, path: Path, width: int = 1280) -> None:
    """The whole page, not just the window: grow the window to the document's height."""
    await browser.call("set_window_size", width, 600)
    await browser.js("window.scrollTo(0, 0)")
    height = await browser.js("return document.documentElement.scrollHeight + "
                              "(window.outerHeight - window.innerHeight)")
    await browser.call("set_window_size", width, min(max(int(height), 600), 4000))
    await browser.js("window.scrollTo(0, 0)")
    await browser.screenshot(path)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screens")
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(shoot(out))
    sys.stdout.write(f"screenshots in {out}\n")


if __name__ == "__main__":
    main()
