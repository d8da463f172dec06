"""Archive trust from server-side facts (issue 15): the probe's exact attack, and its parts.

The probe revoked a box (`tiepdan-provision revoke`), then sent a record signed with the stolen
key, backdated before the revocation, into a session closed earlier, and it was accepted. Here
the same attack goes to the real controller over HTTPS and fails; and the archive refuses it
on its own as well (frozen recording, closed session), should the certificate ever get through.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.recording.arc_support import archive_controller, ended_session, enroll, write_recording
from tests.support import box_http, eventually
from tiepdan.controller.archive.closed import ClosedSession
from tiepdan.controller.service import Controller
from tiepdan.errors import TiepdanError
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import TlsSettings
from tiepdan.firmware.evidence.manifest import FILENAME, Record, Segment, parse_line, sign
from tiepdan.tools.broker import Mosquitto


def _tls(state: Path) -> TlsSettings:
    return TlsSettings(ca_file=state / "tls" / "ca.pem", cert_file=state / "tls" / "device.pem",
                       key_file=state / "tls" / "device.key")


def _base(c: Controller, session: str, device: str) -> str:
    return f"{c.boxes.url}/archive/v1/recordings/{session}/{device}"


async def _upload(c: Controller, session: str, device: str, directory: Path,
                  records: list[Record], state: Path) -> None:
    """What the box's uploader does: records, then every segment, over its certificate."""
    async with box_http(_tls(state)) as http:
        async with http.post(f"{_base(c, session, device)}/records",
                             data=b"".join(r.line() + b"\n" for r in records)) as reply:
            assert reply.status == 200, await reply.text()
        for record in records:
            if record.segment is not None:
                async with http.put(f"{_base(c, session, device)}/segments/"
                                    f"{record.segment.name}",
                                    data=(directory / record.segment.name).read_bytes()
                                    ) as reply:
                    assert reply.status == 200, await reply.text()


def _next(records: list[Record], key: Ed25519PrivateKey, kind: str, utc_ms: int,
          **extra: object) -> Record:
    """A record that chains onto `records`, as a holder of the key can make one."""
    last = records[-1]
    fields: dict[str, object] = {"segment": None, "detail": {}, **extra}
    record = msgspec.structs.replace(last, seq=last.seq + 1, prev=last.hash, kind=kind,
                                     utc_ms=utc_ms, sig="", **fields)
    return sign(record, key)


def _fake_segment(index: int) -> Segment:
    digest = hashlib.sha256(b"forged").hexdigest()
    return Segment(name=f"{index:06d}.mkv.age", index=index, ct_sha256=digest, ct_size=6,
                   pt_sha256=digest, pt_size=6, start_utc_ms=protocol.now_ms(),
                   duration_ms=2000)


async def test_revoked_key_cannot_backdate_into_a_closed_session(tmp_path: Path,
                                                                 broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker, record_bridge=False) as c:
        session = await ended_session(c, "box-a", "box-b")
        uploaded: dict[str, list[Record]] = {}
        keys: dict[str, Ed25519PrivateKey] = {}
        for device in ("box-a", "box-b"):
            state = tmp_path / device
            keys[device] = enroll(c, state, device)
            directory = state / "recordings" / session
            uploaded[device] = write_recording(directory, device=device, session=session,
                                               key=keys[device],
                                               recipients=c.archive.recipients, segments=1,
                                               size=5000)
            await _upload(c, session, device, directory, uploaded[device], state)
        await eventually(lambda: c.archive.closed(session) is not None, timeout=20,
                         what="the session closed")
        closed_at = protocol.now_ms()
        manifest = c.archive.recording_dir(session, "box-a") / FILENAME
        before = manifest.read_bytes()

        # the admin revokes box-a, as `tiepdan-provision revoke` does
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {c.token}"}) as h, \
                h.post(f"{c.config.api_url}/api/provisioning/boxes/box-a/revoke",
                       json={"reason": "stolen from the hall"}) as reply:
            assert reply.status == 200, await reply.text()

        # the thief's record: chained, signed with the stolen key, dated before the close
        forged = _next(uploaded["box-a"], keys["box-a"], "segment", closed_at - 60_000,
                       segment=_fake_segment(1))
        async with box_http(_tls(tmp_path / "box-a")) as http, http.post(
                f"{_base(c, session, 'box-a')}/records", data=forged.line() + b"\n") as reply:
            assert reply.status == 401  # the stolen certificate no longer opens the listener
            assert "revoked" in (await reply.json())["error"]["message"]
        # and the archive refuses it by itself: the recording is frozen where it ended
        with pytest.raises(TiepdanError) as refused:
            await asyncio.to_thread(c.archive.ingest_records, session, "box-a",
                                    [forged.line()])
        assert refused.value.code == "frozen"
        assert manifest.read_bytes() == before
        closed = c.archive.closed(session)
        assert isinstance(closed, ClosedSession)
        assert {r.recorder: r.records for r in closed.recordings}["box-a"] == \
            len(uploaded["box-a"])

        # a box still trusted cannot add content to the closed session either ...
        box_b = uploaded["box-b"]
        late = _next(box_b, keys["box-b"], "start", protocol.now_ms())
        async with box_http(_tls(tmp_path / "box-b")) as http:
            async with http.post(f"{_base(c, session, 'box-b')}/records",
                                 data=late.line() + b"\n") as reply:
                assert reply.status == 409
                assert (await reply.json())["error"]["code"] == "session_closed"
            # ... but its upload bookkeeping goes on (the box's uploader appends these)
            name = next(r.segment.name for r in box_b if r.segment is not None)
            done = _next(box_b, keys["box-b"], "uploaded", protocol.now_ms(),
                         detail={"name": name})
            async with http.post(f"{_base(c, session, 'box-b')}/records",
                                 data=done.line() + b"\n") as reply:
                assert reply.status == 200, await reply.text()


async def test_records_after_a_stop_need_a_new_start(tmp_path: Path, broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker, record_bridge=False) as c:
        # box-b never uploads, so the session stays open for the archive
        session = await ended_session(c, "box-a", "box-b")
        state = tmp_path / "box-a"
        key = enroll(c, state, "box-a")
        records = write_recording(state / "recordings" / session, device="box-a",
                                  session=session, key=key, recipients=c.archive.recipients,
                                  segments=0)
        assert [r.kind for r in records] == ["start", "stop"]
        await _upload(c, session, "box-a", state / "recordings" / session, records, state)
        after = _next(records, key, "segment", records[-1].utc_ms - 1000,
                      segment=_fake_segment(0))
        with pytest.raises(TiepdanError) as refused:
            c.archive.ingest_records(session, "box-a", [after.line()])
        assert refused.value.code == "not_recording"
        # a rejoin starts again; then segments are taken
        again = _next(records, key, "start", protocol.now_ms())
        segment = _next([*records, again], key, "segment", protocol.now_ms(),
                        segment=_fake_segment(0))
        result = c.archive.ingest_records(session, "box-a", [again.line(), segment.line()])
        assert result.accepted == 2


async def test_the_receipt_time_is_a_second_check(tmp_path: Path, broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker) as c:
        session = await ended_session(c, "box-a", "box-b")
        state = tmp_path / "box-a"
        key = enroll(c, state, "box-a")
        records = write_recording(state / "r", device="box-a", session=session, key=key,
                                  recipients=c.archive.recipients, segments=0, stop=False)
        c.archive.ingest_records(session, "box-a", [r.line() for r in records])
        record = parse_line(records[0].line())
        received = protocol.now_ms()
        assert c.archive.key_for(record) is not None  # the stored receipt time is used
        c.identities.revoke("box-a", "stolen", at=received / 1000 + 1)
        # signed and received before the revocation: still evidence (the closing re-checks it)
        assert c.archive.key_for(record) is not None
        assert c.archive.key_for(record, received) is not None
        # the same record arriving after the revocation: refused, whatever utc_ms it claims
        assert c.archive.key_for(record, received + 5_000) is None
