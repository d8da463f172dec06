"""The archive pages: sessions, the verification report, MP4 export for archivists only."""

from __future__ import annotations

import io
from pathlib import Path

import av

from tests.controller.console_support import Browser, console_controller
from tests.recording.ver_support import BOX, BRIDGE, SESSION, build_archive
from tiepdan.tools.broker import Mosquitto


async def test_archivist_verifies_and_exports_others_cannot(tmp_path: Path,
                                                            broker: Mosquitto) -> None:
    archive = build_archive(tmp_path / "a")
    identity = archive.identity_file.read_text()
    archive.identity_file.unlink()  # kept offline: the archivist pastes it
    async with console_controller(tmp_path, broker,
                                  controller={"data_dir": str(archive.data_dir)}) as c, \
            Browser(c) as b:
        await b.login("luutru")
        status, page = await b.get("/archive")
        assert status == 200 and SESSION in page
        status, page = await b.get(f"/archive/{SESSION}")
        assert status == 200 and BOX in page and BRIDGE in page and "Xuất MP4" in page
        status, page = await b.get(f"/archive/{SESSION}/verify")
        assert status == 200 and "tất cả hợp lệ" in page
        # bad input: no identity, a malformed one
        for bad in ("", "AGE-SECRET-KEY-1NOTAKEY"):
            status, page = await b.post(f"/archive/{SESSION}/{BOX}/export", {"identity": bad})
            assert status == 400 and "AGE-SECRET-KEY-1" in page
        async with b.http.post(f"/archive/{SESSION}/{BOX}/export",
                               data={"identity": identity, "csrf": b.csrf}) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "video/mp4"
            body = await reply.read()
        with av.open(io.BytesIO(body)) as container:
            assert {s.type for s in container.streams} == {"video", "audio"}
            assert sum(1 for _ in container.decode(video=0)) > 0
        assert list((archive.data_dir / "exports").iterdir()) == []  # nothing left behind
        entry = next(e for e in c.people.audit.recent() if e.action == "archive.export")
        assert (entry.user, entry.target) == ("luutru", f"{SESSION}/{BOX}")

        # a tampered segment: the export is refused and said so
        archive.recordings[BOX].segment_file(1).write_bytes(b"not what was signed")
        status, page = await b.post(f"/archive/{SESSION}/{BOX}/export", {"identity": identity})
        assert status == 409 and "Từ chối xuất" in page
        status, page = await b.get(f"/archive/{SESSION}/verify")
        assert "có vấn đề" in page

    async with console_controller(tmp_path, broker,
                                  controller={"data_dir": str(archive.data_dir)}) as c:
        for who in ("lanhdao", "kythuat"):
            async with Browser(c) as other:
                await other.login(who)
                await other.get("/fleet")
                status, page = await other.post(f"/archive/{SESSION}/{BRIDGE}/export",
                                                {"identity": identity})
                assert status == 403, who
        assert not [e for e in c.people.audit.recent() if e.action == "archive.export"
                    and e.user != "luutru"]
