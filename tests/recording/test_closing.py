"""Closing a session: refused while a segment is missing, signed and final once it arrives;
the bridge records a real session into the archive on its own."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.recording.arc_support import (
    archive_controller,
    ended_session,
    enroll,
    raw_public,
    write_recording,
)
from tests.sessions.points import BRIDGE, points
from tests.support import (
    box_http,
    database_settings,
    eventually,
    init_ca,
    issue_box_tls,
    make_controller_config,
    running_controller,
)
from tiepdan.controller.archive.closed import ClosedSession
from tiepdan.controller.cli.client import ApiClient
from tiepdan.controller.service import Controller
from tiepdan.firmware.evidence.manifest import Record, verify_chain
from tiepdan.tools.broker import Mosquitto


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # as in tests/sessions: aioice skips 127.0.0.1 when it gathers host candidates
    monkeypatch.setattr("aioice.ice.get_host_addresses",
                        lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
    yield


def _http(c: Controller, device: str, directory: Path) -> aiohttp.ClientSession:
    """HTTPS as the box: its certificate opens the archive's listener, for its recording."""
    tls, _ = issue_box_tls(c.config, device, directory)
    return box_http(tls)


async def _send(c: Controller, session: str, device: str, directory: Path,
                records: list[Record], skip: set[str]) -> None:
    base = f"{c.boxes.url}/archive/v1/recordings/{session}/{device}"
    async with _http(c, device, directory) as http:
        await _send_with(http, base, directory, records, skip)


async def _send_with(http: aiohttp.ClientSession, base: str, directory: Path,
                     records: list[Record], skip: set[str]) -> None:
    async with http.post(base + "/records",
                         data=b"".join(r.line() + b"\n" for r in records)) as reply:
        assert reply.status == 200, await reply.text()
    for record in records:
        if record.segment is not None and record.segment.name not in skip:
            async with http.put(f"{base}/segments/{record.segment.name}",
                                data=(directory / record.segment.name).read_bytes()) as reply:
                assert reply.status == 200


def _state(c: Controller, session: str) -> str:
    found = c.sessions.get(session)
    assert found is not None
    return found.state


async def test_close_refused_with_a_missing_segment_then_closed(tmp_path: Path,
                                                                broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker, record_bridge=False) as c:
        session = await ended_session(c, "box-a", "box-b", "box-c", joined=("box-a", "box-b"))
        recordings = {}
        for device in ("box-a", "box-b"):
            key = Ed25519PrivateKey.generate()
            c.identities.bind(device, raw_public(key))
            directory = tmp_path / device
            recordings[device] = (directory, write_recording(
                directory, device=device, session=session, key=key,
                recipients=c.archive.recipients, segments=3, size=20_000))
        await _send(c, session, "box-a", *recordings["box-a"], skip=set())
        await _send(c, session, "box-b", *recordings["box-b"], skip={"000001.mkv.age"})

        def pending() -> list[dict[str, object]]:
            return [e for e in c.sessions.history(session) if e["what"] == "close_pending"]

        await eventually(lambda: any("000001.mkv.age" in str(e["detail"]) for e in pending()),
                         timeout=10, what="the closer saying which segment is missing")
        assert _state(c, session) == "ended"
        assert not (c.archive.closed_dir / f"{session}.json").exists()
        # an admin cannot force it either
        client = ApiClient.from_config(c.config)
        listing = await asyncio.to_thread(client.get, f"/api/archive/sessions/{session}")
        assert listing["state"] == "ended" and listing["problems"]
        assert listing["closed"] is None

        directory, records = recordings["box-b"]
        missing = next(r for r in records if r.segment and r.segment.name == "000001.mkv.age")
        assert missing.segment is not None
        async with _http(c, "box-b", directory) as http, http.put(
                f"{c.boxes.url}/archive/v1/recordings/{session}/box-b/segments/000001.mkv.age",
                data=(directory / "000001.mkv.age").read_bytes()) as reply:
            assert reply.status == 200
        await eventually(lambda: _state(c, session) == "closed", timeout=10,
                         what="the session closed")

        document = msgspec.json.decode(
            (c.archive.closed_dir / f"{session}.json").read_bytes(), type=ClosedSession)
        public = Ed25519PublicKey.from_public_bytes(c.signing.public_raw())
        public.verify(base64.b64decode(document.sig), document.signed_bytes())
        assert document.points == ["box-a", "box-b"]
        assert document.closed_by == "controller-central"
        by_recorder = {r.recorder: r for r in document.recordings}
        for device, (_, records) in recordings.items():
            declared = [r.segment.ct_sha256 for r in records if r.segment is not None]
            assert [s.ct_sha256 for s in by_recorder[device].segments] == declared
            assert by_recorder[device].last_hash == records[-1].hash
            assert by_recorder[device].end == "stop"
        assert any(e["what"] == "archived" for e in c.sessions.history(session))
        listing = await asyncio.to_thread(client.get, "/api/sessions", state="closed")
        assert [s["id"] for s in listing["sessions"]] == [session]
        shown = await asyncio.to_thread(client.get, f"/api/archive/sessions/{session}")
        assert shown["closed"]["sig"] == document.sig
        # records that arrive after closing (uploaded, deleted) are still taken
        assert c.archive.next_seq(session, "box-a") == len(recordings["box-a"][1])


async def test_bridge_records_a_real_session_into_the_archive(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    devices = ["pt-host", "pt-1"]
    config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                    sessions={"invite_timeout": 5.0},
                                    archive={"close_interval": 0.2, "segment_seconds": 1.0})
    async with running_controller(config) as c, points(tmp_path, broker, devices) as agents:
        await eventually(lambda: all(c.registry.get(d) for d in devices), 10,
                         what="every box registered")
        session = await c.sessions.open("pt-host", devices[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every point live")
        recorder = c.archive.recorder_id
        await eventually(lambda: len(c.archive.receipts(session.id, recorder)) >= 2, 20,
                         what="bridge segments in the archive")
        await c.sessions.end(session.id, "test")
        await eventually(lambda: c.archive.recordings(session.id) and
                         c.archive.recordings(session.id)[0]["last_kind"] == "stop", 15,
                         what="the bridge recording stopped")
        manifest = c.archive.recording_dir(session.id, recorder) / "manifest.jsonl"
        records, problems = verify_chain(manifest.read_bytes().splitlines(), device=recorder,
                                         session=session.id, key_for=c.archive.key_for)
        assert not problems
        segments = [r.segment for r in records if r.segment is not None]
        assert len(segments) >= 2
        # the records go in first, then the files: the last segment may still be on its way
        await eventually(lambda: len(c.archive.receipts(session.id, recorder)) == len(segments),
                         10, what="every bridge segment receipted")
        await eventually(lambda: not (c.archive.dir / "staging" / session.id).exists(), 10,
                         what="the bridge's staging directory cleaned up")
        # the boxes did not record here (no recorder wired in this test): it stays ended
        await eventually(lambda: any(e["what"] == "close_pending"
                                     for e in c.sessions.history(session.id)), 10,
                         what="close pending on the boxes")
        await eventually(lambda: not any(recorder in p for p in
                                         c.closer.problems.get(session.id, [recorder])), 10,
                         what="the bridge recording complete for the closer")
        assert _state(c, session.id) == "ended"
        assert any("pt-1" in p for p in c.closer.problems[session.id])


async def test_a_live_session_records_and_closes(tmp_path: Path, broker: Mosquitto,
                                                 database: Path | str) -> None:
    """End to end on either database: two enrolled boxes join a live session through the
    bridge, record and upload to the archive; once ended, the session closes with its signed
    record, its state, log and archive index kept in the configured database."""
    devices = ["pt-rhost", "pt-rguest"]
    config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                    database=database_settings(database),
                                    sessions={"invite_timeout": 5.0},
                                    archive={"close_interval": 0.2, "segment_seconds": 1.0})
    init_ca(config)  # the box listener, where boxes upload, needs the provisioning CA
    async with running_controller(config) as c:
        assert c.db.dialect == ("sqlite" if isinstance(database, Path) else "postgresql")
        assert c.archive._db.dialect == c.db.dialect  # the archive index follows database.url
        for device in devices:
            enroll(c, tmp_path / device, device)
        recording = {"archive_url": c.boxes.url, "segment_seconds": 1.0,
                     "upload_retry_max": 0.5, "delete_grace": 0.0}
        async with points(tmp_path, broker, devices, recording=recording) as agents:
            await eventually(lambda: all(a.recipients.current() is not None
                                         for a in agents.values()), 20,
                             what="the archive's recipients on every box")
            await eventually(lambda: all(c.registry.get(d) for d in devices), 10,
                             what="every box registered")
            session = await c.sessions.open(devices[0], devices[1:], auto_join=True)
            await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                             what="every point live")
            await eventually(lambda: all(len(c.archive.receipts(session.id, d)) >= 2
                                         for d in devices), 30,
                             what="every box's segments in the archive")
            await c.sessions.end(session.id, "test")
            await eventually(lambda: _state(c, session.id) == "closed", 60,
                             what="the session closed")
        whats = [e["what"] for e in c.sessions.history(session.id)]
        assert whats[0] == "opened" and "live" in whats and whats[-1] == "closed", whats
        assert c.archive.closed(session.id) is not None
