"""The updates pages: a real signed bundle in a real TUF repository, campaigns started, steered
and refused from the console; technicians look but cannot start one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.controller.console_support import Browser, announce_all, console_controller
from tests.ota.harness import build_variants, make_repository
from tests.support import eventually
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto

BOXES = {f"xa-{n:02d}": ("nghe-an" if n % 2 else "ha-tinh", f"xa{n:02d}") for n in range(6)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_variants(tmp_path_factory.mktemp("bundles"), ["good"])["good"]


async def test_admin_starts_steers_and_is_refused_bad_campaigns(
        tmp_path: Path, broker: Mosquitto, bundle: Path) -> None:
    repo = make_repository(tmp_path)
    repo.add_bundle(bundle)
    ota = {"repository": str(repo.path), "keys": str(tmp_path / "keys"), "tick": 0.2}
    async with console_controller(tmp_path, broker, ota=ota) as c, Browser(c) as b:
        await announce_all(c, BOXES)
        await b.login("kythuat")
        status, page = await b.get("/updates")
        assert status == 200 and "tiepdan-1.1.0.tar" in page
        assert 'action="/updates"' not in page  # no campaign form for a technician
        status, _ = await b.post("/updates", {"target": "tiepdan-1.1.0.tar", "waves": "100"})
        assert status == 403
        assert c.updates.campaigns.all() == []

        b2 = Browser(c)
        async with b2:
            await b2.login("quantri")
            await b2.get("/updates")
            for data, message in (
                    ({"target": "nope.tar"}, "Hãy chọn một gói"),
                    ({"target": "tiepdan-1.1.0.tar", "waves": "50 20"}, "tăng dần"),
                    ({"target": "tiepdan-1.1.0.tar", "waves": "abc"}, "tăng dần"),
                    ({"target": "tiepdan-1.1.0.tar", "waves": "50"}, "tăng dần"),
                    ({"target": "tiepdan-1.1.0.tar", "max_failure": "200"}, "Ngưỡng lỗi")):
                status, page = await b2.post("/updates", data)
                assert status == 400 and message in page, data
            assert c.updates.campaigns.all() == []
            status, page = await b2.post("/updates", {
                "target": "tiepdan-1.1.0.tar", "version": "1.1.0", "name": "Bản 1.1",
                "province": "nghe-an", "waves": "34 100", "max_failure": "10"})
            assert status == 200, page
            [campaign] = c.updates.campaigns.all()
            assert campaign["spec"]["selector"] == {"province": "nghe-an"}
            assert sum(w["boxes"] for w in campaign["waves"]) == 3  # nghe-an's three boxes
            assert "Đợt 1 (34%)" in page and "Tiến độ theo đợt" in page
            cid = campaign["id"]
            # live: a box's job update over MQTT reaches a viewer of the campaign's page
            def first_wave() -> list[str]:
                return [b["device"] for b in c.updates.campaigns.summary(cid, boxes=True)["boxes"]
                        if b["state"] == "notified"]
            # the engine notifies on its own tick, not inside the request
            await eventually(first_wave, 10, what="the first wave notified")
            notified = first_wave()
            async with b2.http.get(f"/live?topics=updates,campaign:{cid}") as stream:
                await asyncio.sleep(0.3)
                update = protocol.JobUpdate(job=cid, status="in_progress", ts=protocol.now_ms(),
                                            seq=1, running="1.0.0", step="downloading",
                                            progress=40.0)
                await c.link.publish(protocol.job_update_topic(notified[0], cid),
                                     protocol.encode(update), qos=1)
                seen = b""
                while b"campaign:" + cid.encode() not in seen:
                    seen += await asyncio.wait_for(stream.content.readline(), 10)
            status, page = await b2.get(f"/updates/{cid}")
            assert "40%" in page and "đang tải" in page
            status, page = await b2.post(f"/updates/{cid}/pause", {"reason": "kiểm tra"})
            assert status == 200 and c.updates.campaigns.summary(cid)["state"] == "paused"
            status, page = await b2.post(f"/updates/{cid}/pause", {})
            assert status == 409 and "Hiện không thể làm" in page
            status, page = await b2.post(f"/updates/{cid}/resume", {})
            assert c.updates.campaigns.summary(cid)["state"] == "running"
            status, page = await b2.post(f"/updates/{cid}/abort", {"reason": "thử"})
            assert c.updates.campaigns.summary(cid)["state"] == "halted"
            status, page = await b2.get("/updates/history")
            assert status == 200 and cid in page
        # the technician sees the campaign but no steering buttons
        status, page = await b.get(f"/updates/{cid}")
        assert status == 200 and f"/updates/{cid}/resume" not in page
        status, _ = await b.post(f"/updates/{cid}/resume", {})
        assert status == 403
        actions = [e.action for e in c.people.audit.recent()]
        for action in ("campaign.create", "campaign.pause", "campaign.resume", "campaign.abort"):
            assert action in actions
