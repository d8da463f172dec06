"""The box's uploader against the real archive: cuts, restarts, bad receipts, completeness."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.recording.arc_support import (
    CutProxy,
    Interposer,
    controller_config,
    ended_session,
    enroll,
    manifest_records,
    write_recording,
)
from tests.support import eventually, make_agent_config, running_agent, running_controller
from tiepdan.controller.archive.closed import ClosedSession
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.core.mqtt import client_context
from tiepdan.tools.broker import Mosquitto, free_port

BOX = "box-a"


def _agent_config(tmp_path: Path, broker: Mosquitto, url: str, grace: float = 0.0) -> Any:
    return make_agent_config(tmp_path, broker, BOX, recording={
        "enabled": False, "archive_url": url, "delete_grace": grace, "upload_retry_max": 0.5,
        "upload_timeout": 5.0})


def _box_dir(tmp_path: Path, session: str) -> Path:
    return tmp_path / BOX / "recordings" / session


def _kinds(directory: Path) -> list[str]:
    return [r.kind for r in manifest_records(directory / "manifest.jsonl")]


def _complete(c: Controller, session: str, directory: Path, segments: int) -> bool:
    kinds = _kinds(directory)
    return (kinds.count("deleted") == segments and not list(directory.glob("*.age"))
            and c.archive.next_seq(session, BOX) == len(kinds)
            and len(c.archive.receipts(session, BOX)) == segments)


async def test_uploads_everything_then_deletes(tmp_path: Path, broker: Mosquitto) -> None:
    async with running_controller(controller_config(tmp_path, broker)) as c:
        session = await ended_session(c, BOX, "box-b")
        key = enroll(c, tmp_path / BOX, BOX)
        directory = _box_dir(tmp_path, session)
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=c.archive.recipients, segments=3)
        # while archive_url is empty nothing moves
        async with running_agent(_agent_config(tmp_path, broker, "")) as box:
            assert (await box.agent.uploader.sync()).records_sent == 0
            assert c.archive.next_seq(session, BOX) == 0
            # Three segments without receipts: health reports how old the oldest is.
            later = protocol.now_ms() + 60_000
            assert box.agent.uploader.backlog_seconds(later) >= 60
            assert ((await box.agent.telemetry.read()).recording_backlog_s or 0) > 0
        async with running_agent(_agent_config(tmp_path, broker, c.boxes.url)) as box:
            await eventually(lambda: _complete(c, session, directory, 3), timeout=20,
                             what="every segment archived and deleted")
            assert box.agent.recipients.current() == c.archive.recipients
            assert box.agent.uploader.backlog_seconds() == 0
        kinds = _kinds(directory)
        assert kinds.count("uploaded") == 3 and kinds[-1] == "deleted"
        for record in manifest_records(directory / "manifest.jsonl"):
            if record.kind == "deleted":
                assert record.detail["name"] in {r.name for r in
                                                 c.archive.receipts(session, BOX)}


async def test_upload_resumes_after_a_cut_mid_put(tmp_path: Path, broker: Mosquitto,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_controller(controller_config(tmp_path, broker)) as c:
        session = await ended_session(c, BOX, "box-b")
        key = enroll(c, tmp_path / BOX, BOX)
        directory = _box_dir(tmp_path, session)
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=c.archive.recipients, segments=2, size=600_000)
        proxy = CutProxy(c.boxes.port or 0)
        proxy.cut_after = 300_000  # bytes per connection: inside the first PUT
        await proxy.start()
        try:
            async with running_agent(_agent_config(
                    tmp_path, broker, f"https://127.0.0.1:{proxy.port}")) as box:
                await eventually(lambda: proxy.cuts >= 2, timeout=20, what="cut uploads")
                await eventually(lambda: "archive_upload_cut" in caplog.text, timeout=10,
                                 what="the archive to see the cut")
                assert not _kinds(directory).count("deleted")
                assert list(directory.glob("*.age"))
                proxy.cut_after = None
                await eventually(lambda: _complete(c, session, directory, 2), timeout=30,
                                 what="completeness after the cuts")
                assert box.agent.uploader.failures == 0
        finally:
            await proxy.close()
        resumed = [line for line in caplog.text.splitlines() if "archive_upload " in line
                   and "offset=0" not in line]
        assert resumed, "no upload resumed from an offset"


async def test_archive_restart_mid_recording(tmp_path: Path, broker: Mosquitto) -> None:
    config = controller_config(tmp_path, broker, record_bridge=False)
    # the box listener keeps its port across the restart, as a deployment's does
    config = msgspec.structs.replace(config, boxes=msgspec.structs.replace(
        config.boxes, port=free_port()))
    url = f"https://127.0.0.1:{config.boxes.port}"
    async with running_controller(config) as c:
        # box-b's recording comes last, so the session cannot close before the end
        session = await ended_session(c, BOX, "box-b", joined=(BOX, "box-b"))
        key = enroll(c, tmp_path / BOX, BOX)
        recipients = c.archive.recipients
        directory = _box_dir(tmp_path, session)
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=recipients, segments=2, stop=False)
        async with running_agent(_agent_config(tmp_path, broker, url)) as box:
            await eventually(lambda: len(c.archive.receipts(session, BOX)) == 2, timeout=20,
                             what="first segments")
            await c.closer.close(session, "test")
    # the archive is down: the box records on and keeps trying
    async with running_agent(_agent_config(tmp_path, broker, url)) as box:
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=recipients, segments=2, first=2)
        await eventually(lambda: box.agent.uploader.failures >= 2, timeout=20,
                         what="failed passes while the archive is down")
        assert len(list(directory.glob("*.age"))) == 2
        async with running_controller(config) as c:
            await eventually(lambda: _complete(c, session, directory, 4), timeout=30,
                             what="completeness after the archive restarted")
            other = tmp_path / "box-b" / "recordings" / session
            for record in write_recording(other, device="box-b", session=session,
                                          key=enroll(c, tmp_path / "box-b", "box-b"),
                                          recipients=recipients, segments=1):
                c.archive.ingest_records(session, "box-b", [record.line()])
                if record.segment is not None:
                    c.archive.ingest_file(session, "box-b", record.segment.name,
                                          other / record.segment.name)
            result = await c.closer.close(session, "test")
            assert isinstance(result, ClosedSession), result
            assert c.sessions.get(session).state == "closed"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["forged", "replay", "other-hash"])
async def test_bad_receipts_delete_nothing(tmp_path: Path, broker: Mosquitto,
                                           mode: str) -> None:
    async with running_controller(controller_config(tmp_path, broker)) as c:
        session = await ended_session(c, BOX, "box-b")
        key = enroll(c, tmp_path / BOX, BOX)
        directory = _box_dir(tmp_path, session)
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=c.archive.recipients, segments=3)
        fake = Interposer(c.boxes.url, c.signing, client_context(
            make_agent_config(tmp_path, broker, BOX).box_tls()))
        fake.mode = mode
        await fake.start()
        try:
            async with running_agent(_agent_config(
                    tmp_path, broker, f"http://127.0.0.1:{fake.port}")) as box:
                agent: Agent = box.agent
                await eventually(lambda: agent.uploader.failures >= 3, timeout=20,
                                 what="refused receipts")
                kinds = _kinds(directory)
                names = sorted(p.name for p in directory.glob("*.age"))
                if mode == "replay":
                    # the first segment's own receipt is genuine; the others' are not theirs
                    assert kinds.count("deleted") <= 1
                    assert len(names) >= 2
                else:
                    assert "deleted" not in kinds and "uploaded" not in kinds
                    assert len(names) == 3
                    assert not (directory / "receipts.jsonl").exists()
                fake.mode = "pass"
                await eventually(lambda: _complete(c, session, directory, 3), timeout=30,
                                 what="completeness once receipts are genuine")
        finally:
            await fake.close()
