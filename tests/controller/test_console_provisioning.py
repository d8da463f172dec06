"""The provisioning pages, against a real provisioning CA and a real mutual-TLS Mosquitto."""

from __future__ import annotations

from tests.controller.console_support import Browser, add_people
from tests.support import SecureBroker, running_controller


async def test_technician_makes_a_claim_prints_labels_and_revokes(
        secure_broker: SecureBroker) -> None:
    config = secure_broker.controller_config(console={"secure_cookies": True})
    async with running_controller(config) as c, Browser(c) as b:
        add_people(c)
        await b.login("kythuat")
        status, page = await b.get("/provisioning")
        assert status == 200 and "Tạo mã đăng ký" in page
        for data, message in (
                ({"kind": "commune", "hall": "Nhà văn hóa", "commune": ""}, "cần mã xã"),
                ({"kind": "commune", "hall": "", "commune": "nghi-loc"}, "tên hội trường"),
                ({"kind": "commune", "hall": "X", "commune": "Nghi Loc"}, "cần mã xã"),
                ({"kind": "commune", "hall": "X", "commune": "nghi-loc", "days": "900"},
                 "Thời hạn mã"),
                ({"kind": "village", "hall": "X", "commune": "nghi-loc"}, "loại điểm cầu"),
                ({"kind": "commune", "hall": "X", "commune": "nghi-loc", "device": "Bad Id"},
                 "Mã hộp")):
            status, page = await b.post("/provisioning", data)
            assert status == 400 and message in page, data
        assert c.provisioning.claims.all() == []
        status, page = await b.post("/provisioning", {
            "kind": "commune", "hall": "UBND xã Nghi Lộc", "commune": "nghi-loc",
            "province": "nghe-an"})
        assert status == 201
        [box] = c.provisioning.claims.all()
        assert box.device in page and "<svg" in page and 'id="claim-token"' in page
        status, sheet = await b.get("/provisioning/labels")
        assert status == 200 and sheet.count("<figure") == 1 and "UBND xã Nghi Lộc" in sheet
        # revoke: the id must be typed, a reason given
        await b.get(f"/provisioning/{box.device}/revoke")
        status, page = await b.post(f"/provisioning/{box.device}/revoke",
                                    {"reason": "mất", "confirm": "xa-khac"})
        assert status == 400 and "gõ đúng mã hộp" in page
        status, page = await b.post(f"/provisioning/{box.device}/revoke",
                                    {"reason": "", "confirm": box.device})
        assert status == 400
        found = c.provisioning.claims.get(box.device)
        assert found is not None and found.revoked_at is None
        status, page = await b.post(f"/provisioning/{box.device}/revoke",
                                    {"reason": "bị mất cắp", "confirm": box.device})
        assert status == 200 and "đã thu hồi" in page
        found = c.provisioning.claims.get(box.device)
        assert found is not None and found.revoked_reason == "bị mất cắp"
        actions = [(e.user, e.action) for e in c.people.audit.recent()]
        assert ("kythuat", "provisioning.new_box") in actions
        assert ("kythuat", "provisioning.revoke") in actions
    async with running_controller(config) as c, Browser(c) as b:
        await b.login("lanhdao")
        assert (await b.get("/provisioning"))[0] == 403
