"""The archive over real HTTP: the good path and every refusal (records, segments, recipients)."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.recording.arc_support import (
    archive_controller,
    ended_session,
    raw_public,
    register,
    seal,
    write_recording,
)
from tests.support import box_http, issue_box_tls
from tiepdan.controller.service import Controller
from tiepdan.errors import TiepdanError
from tiepdan.firmware.evidence.manifest import Manifest, Record, Segment, sign
from tiepdan.firmware.evidence.receipt import Receipt, check_receipt
from tiepdan.firmware.evidence.recipients import RecipientsError, verify_document
from tiepdan.tools.broker import Mosquitto

BOX = "box-a"


def _base(c: Controller, session: str, recorder: str = BOX) -> str:
    return f"{c.boxes.url}/archive/v1/recordings/{session}/{recorder}"


def _client(c: Controller, tmp_path: Path, device: str = BOX) -> aiohttp.ClientSession:
    """HTTPS as `device` shows itself: its client certificate from the provisioning CA."""
    tls, _ = issue_box_tls(c.config, device, tmp_path / f"tls-{device}")
    return box_http(tls)


def _body(records: list[Record]) -> bytes:
    return b"".join(r.line() + b"\n" for r in records)


async def _post(http: aiohttp.ClientSession, url: str,
                data: bytes) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/records", data=data) as reply:
        return reply.status, await reply.json()


async def test_records_good_path_and_refusals(tmp_path: Path, broker: Mosquitto,
                                              database: Path | str) -> None:
    async with archive_controller(tmp_path, broker, database) as c, _client(c, tmp_path) as http:
        session = await ended_session(c, BOX, "box-b")
        key = Ed25519PrivateKey.generate()
        c.identities.bind(BOX, raw_public(key))
        box_dir = tmp_path / "box" / session
        records = write_recording(box_dir, device=BOX, session=session, key=key,
                                  recipients=c.archive.recipients, segments=2, size=1000)
        url = _base(c, session)

        status, body = await _post(http, url, _body(records[:2]))
        assert (status, body["accepted"], body["next_seq"]) == (200, 2, 2)
        # a repeat of accepted records is fine; the rest is then taken
        status, body = await _post(http, url, _body(records))
        assert (status, body["duplicates"], body["accepted"]) == (200, 2, 2)
        async with http.get(url) as reply:
            assert (await reply.json())["next_seq"] == 4
        stored = (c.archive.recording_dir(session, BOX) / "manifest.jsonl").read_bytes()
        assert stored == _body(records)

        # a fork: another record under a seen sequence number
        forged = sign(msgspec.structs.replace(records[1], utc_ms=records[1].utc_ms + 1), key)
        status, body = await _post(http, url, _body([forged]))
        assert (status, body["error"]["code"]) == (409, "fork")
        assert (c.archive.recording_dir(session, BOX) / "forks.jsonl").exists()

        # a gap, a broken chain, a bad signature, garbage, the wrong recording
        later = Manifest(tmp_path / "other" / "manifest.jsonl", device=BOX, session=session,
                         key=key, boot_id="b", clock_synced=lambda: True)
        for _ in range(6):
            later.append("start")
        status, body = await _post(http, url, _body([later.records[5]]))
        assert (status, body["error"]["code"], body["next_seq"]) == (409, "gap", 4)
        status, body = await _post(http, url, _body([later.records[4]]))
        assert (status, body["error"]["code"]) == (409, "chain")
        tampered = msgspec.structs.replace(
            sign(msgspec.structs.replace(later.records[0], seq=4, prev=records[-1].hash), key),
            detail={"x": 1})
        status, body = await _post(http, url, _body([tampered]))
        assert (status, body["error"]["code"]) == (403, "signature")
        status, body = await _post(http, url, b"{not json\n")
        assert (status, body["error"]["code"]) == (400, "bad_record")
        status, body = await _post(http, _base(c, "s-nosuchsession"), _body(records[:1]))
        assert (status, body["error"]["code"]) == (404, "unknown_session")
        # a box uses its own recording only, whatever the URL says
        for other in ("box-b", "box-z", "Bad_Id"):
            status, body = await _post(http, _base(c, session, other), _body(records[:1]))
            assert (status, body["error"]["code"]) == (403, "not_your_recording")

        # records sent under another recorder's name; a box that is no point of the session
        c.identities.bind("box-b", raw_public(Ed25519PrivateKey.generate()))
        c.identities.bind("box-z", raw_public(Ed25519PrivateKey.generate()))
        async with _client(c, tmp_path, "box-b") as http_b, \
                _client(c, tmp_path, "box-z") as http_z:
            status, body = await _post(http_b, _base(c, session, "box-b"), _body(records[:1]))
            assert (status, body["error"]["code"]) == (400, "wrong_recording")
            status, body = await _post(http_z, _base(c, session, "box-z"), b"")
            assert (status, body["error"]["code"]) == (403, "not_a_point")
            # records signed by a key the controller never bound for box-b
            stranger = Ed25519PrivateKey.generate()
            unknown = write_recording(tmp_path / "b", device="box-b", session=session,
                                      key=stranger, recipients=c.archive.recipients,
                                      segments=0)
            status, body = await _post(http_b, _base(c, session, "box-b"), _body(unknown))
            assert (status, body["error"]["code"]) == (403, "signature")
        # the archive is still whole and well
        async with http.get(url) as reply:
            assert (await reply.json())["next_seq"] == 4


async def test_revoked_box_records_after_revocation_refused(tmp_path: Path,
                                                            broker: Mosquitto,
                                                            database: Path | str) -> None:
    async with archive_controller(tmp_path, broker, database) as c, _client(c, tmp_path) as http:
        session = await ended_session(c, BOX, "box-b")
        key = Ed25519PrivateKey.generate()
        c.identities.bind(BOX, raw_public(key))
        manifest = Manifest(tmp_path / "m" / "manifest.jsonl", device=BOX, session=session,
                            key=key, boot_id="b", clock_synced=lambda: True)
        status, body = await _post(http, _base(c, session), _body([manifest.append("start")]))
        assert (status, body["accepted"]) == (200, 1)
        signed_before = manifest.append("stop")  # signed before the revocation, sent after
        await c.provisioning.revoke(BOX, "stolen")
        status, body = await _post(http, _base(c, session), _body([signed_before]))
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        # and the archive itself: the recording is frozen where its copy ended
        with pytest.raises(TiepdanError) as refused:
            c.archive.ingest_records(session, BOX, [signed_before.line()])
        assert refused.value.code == "frozen"
        assert c.archive.next_seq(session, BOX) == 1


async def _head(http: aiohttp.ClientSession, url: str) -> tuple[int, int, str]:
    async with http.head(url) as reply:
        return (reply.status, int(reply.headers.get("Upload-Offset", "-1")),
                reply.headers.get("Segment-Stored", ""))


async def test_segments_resumable_idempotent_and_refusals(tmp_path: Path,
                                                          broker: Mosquitto,
                                                          database: Path | str) -> None:
    async with archive_controller(tmp_path, broker, database, max_segment_mb=1) as c, \
            _client(c, tmp_path) as http:
        session = await ended_session(c, BOX, "box-b")
        key = Ed25519PrivateKey.generate()
        c.identities.bind(BOX, raw_public(key))
        box_dir = tmp_path / "box" / session
        records = write_recording(box_dir, device=BOX, session=session, key=key,
                                  recipients=c.archive.recipients, segments=3, size=200_000,
                                  stop=False)
        segments = [r.segment for r in records if r.segment is not None]
        url = _base(c, session)
        seg = segments[0]
        data = (box_dir / seg.name).read_bytes()

        # before its record: unknown
        status, _, _ = await _head(http, f"{url}/segments/{seg.name}")
        assert status == 404
        async with http.put(f"{url}/segments/{seg.name}", data=data) as reply:
            assert reply.status == 404
            assert (await reply.json())["error"]["code"] == "unknown_segment"

        # an oversize segment declared in a signed record: refused by max_segment_mb
        big_plain = b"\0" * (1024 * 1024 + 10)
        big = seal(big_plain, c.archive.recipients)
        manifest = Manifest(box_dir / "manifest.jsonl", device=BOX, session=session, key=key,
                            boot_id="boot", clock_synced=lambda: True)
        records.append(manifest.append("segment", segment=Segment(
            name="000003.mkv.age", index=3, ct_sha256=hashlib.sha256(big).hexdigest(),
            ct_size=len(big), pt_sha256="0" * 64, pt_size=len(big_plain), start_utc_ms=0,
            duration_ms=2000)))
        records.append(manifest.append("stop"))
        status, body = await _post(http, url, _body(records))
        assert status == 200, body

        # half, then a HEAD says where to resume, then the rest
        half = len(data) // 2
        async with http.put(f"{url}/segments/{seg.name}", data=data[:half]) as reply:
            assert reply.status == 202
            assert (await reply.json())["offset"] == half
        assert await _head(http, f"{url}/segments/{seg.name}") == (200, half, "no")
        part = c.archive.recording_dir(session, BOX) / f"{seg.name}.part"
        assert part.stat().st_size == half
        # an offset beyond what the archive holds, and a malformed range
        async with http.put(f"{url}/segments/{seg.name}", data=data[half + 10:],
                            params={"offset": str(half + 10)}) as reply:
            assert reply.status == 416
            assert (await reply.json())["offset"] == half
        async with http.put(f"{url}/segments/{seg.name}", data=b"x",
                            headers={"Content-Range": "bytes=oops"}) as reply:
            assert reply.status == 400
        headers = {"Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}"}
        async with http.put(f"{url}/segments/{seg.name}", data=data[half:],
                            headers=headers) as reply:
            assert reply.status == 200
            receipt = msgspec.json.decode(await reply.read(), type=Receipt)
        public = Ed25519PublicKey.from_public_bytes(c.signing.public_raw())
        check_receipt(receipt, public, session=session, recorder=BOX, name=seg.name,
                      ct_sha256=seg.ct_sha256, ct_size=seg.ct_size)
        assert receipt.record_seq == 1
        stored = c.archive.recording_dir(session, BOX) / seg.name
        assert stored.read_bytes() == data and not part.exists()
        # idempotent: the same receipt again, however it is asked
        async with http.put(f"{url}/segments/{seg.name}", data=data) as reply:
            assert reply.status == 200
            assert msgspec.json.decode(await reply.read(), type=Receipt) == receipt
        assert await _head(http, f"{url}/segments/{seg.name}") == (200, len(data), "yes")
        async with http.get(f"{url}/receipts", params={"name": seg.name}) as reply:
            assert msgspec.convert((await reply.json())["receipts"], list[Receipt]) == [receipt]
        lines = (c.archive.recording_dir(session, BOX) / "receipts.jsonl").read_bytes()
        assert lines.count(b"\n") == 1

        # wrong bytes: refused after the re-hash, nothing kept
        other = segments[1]
        wrong = bytearray((box_dir / other.name).read_bytes())
        wrong[100] ^= 1
        async with http.put(f"{url}/segments/{other.name}", data=bytes(wrong)) as reply:
            assert reply.status == 422
            assert (await reply.json())["error"]["code"] == "hash_mismatch"
        assert not (c.archive.recording_dir(session, BOX) / other.name).exists()
        assert await _head(http, f"{url}/segments/{other.name}") == (200, 0, "no")
        # larger than declared: by Content-Length, and streamed without one
        extra = (box_dir / other.name).read_bytes() + b"garbage"
        async with http.put(f"{url}/segments/{other.name}", data=extra) as reply:
            assert reply.status == 413
            assert (await reply.json())["error"]["code"] == "larger_than_declared"

        async def stream() -> object:
            yield extra

        async with http.put(f"{url}/segments/{other.name}", data=stream()) as reply:
            assert reply.status == 413
        assert await _head(http, f"{url}/segments/{other.name}") == (200, 0, "no")
        # over max_segment_mb
        async with http.put(f"{url}/segments/000003.mkv.age", data=big[:10]) as reply:
            assert reply.status == 413
            assert (await reply.json())["error"]["code"] == "too_large"
        # not a segment name
        async with http.put(f"{url}/segments/..%2Fmanifest.jsonl", data=b"x") as reply:
            assert reply.status in (400, 404)

        # the good ones still go in
        async with http.put(f"{url}/segments/{other.name}",
                            data=(box_dir / other.name).read_bytes()) as reply:
            assert reply.status == 200


async def test_archive_restart_keeps_partial_and_stored(tmp_path: Path,
                                                        broker: Mosquitto,
                                                        database: Path | str) -> None:
    key = Ed25519PrivateKey.generate()
    async with archive_controller(tmp_path, broker, database) as c, _client(c, tmp_path) as http:
        session = await ended_session(c, BOX, "box-b")
        c.identities.bind(BOX, raw_public(key))
        records = write_recording(tmp_path / "box", device=BOX, session=session, key=key,
                                  recipients=c.archive.recipients, segments=2, size=100_000)
        url = _base(c, session)
        await _post(http, url, _body(records))
        segs = [r.segment for r in records if r.segment is not None]
        first = (tmp_path / "box" / segs[0].name).read_bytes()
        second = (tmp_path / "box" / segs[1].name).read_bytes()
        async with http.put(f"{url}/segments/{segs[0].name}", data=first) as reply:
            receipt = await reply.read()
        async with http.put(f"{url}/segments/{segs[1].name}", data=second[:5000]) as reply:
            assert reply.status == 202
    async with archive_controller(tmp_path, broker, database) as c, _client(c, tmp_path) as http:
        url = _base(c, session)
        assert await _head(http, f"{url}/segments/{segs[1].name}") == (200, 5000, "no")
        async with http.put(f"{url}/segments/{segs[0].name}", data=first) as reply:
            assert await reply.read() == receipt
        async with http.put(f"{url}/segments/{segs[1].name}", data=second[5000:],
                            params={"offset": "5000"}) as reply:
            assert reply.status == 200


async def test_recipients_document_and_identity(tmp_path: Path, broker: Mosquitto,
                                                caplog: pytest.LogCaptureFixture) -> None:
    async with archive_controller(tmp_path, broker) as c, _client(c, tmp_path) as http:
        c.identities.bind(BOX, raw_public(Ed25519PrivateKey.generate()))
        async with http.get(f"{c.boxes.url}/archive/v1/recipients") as reply:
            assert reply.status == 200
            document = await reply.read()
        public = Ed25519PublicKey.from_public_bytes(c.signing.public_raw())
        doc = verify_document(document, public)
        identity_file = c.archive.identity_file
        assert stat.S_IMODE(identity_file.stat().st_mode) == 0o600
        assert "offline" in caplog.text
        secret = identity_file.read_text().splitlines()[-1]
        identity = pyrage.x25519.Identity.from_str(secret)
        assert doc.recipients == [str(identity.to_public())]
        # anything sealed to it opens with the identity the archivist keeps
        assert pyrage.decrypt(seal(b"evidence", doc.recipients), [identity]) == b"evidence"
        with pytest.raises(RecipientsError):
            verify_document(document, Ed25519PrivateKey.generate().public_key())
        tampered = document.replace(b"age1", b"age2", 1)
        with pytest.raises(RecipientsError):
            verify_document(tampered, public)
        register(c, BOX)
    escrow = str(pyrage.x25519.Identity.generate().to_public())
    configured = str(pyrage.x25519.Identity.generate().to_public())
    async with archive_controller(tmp_path, broker, recipients=[configured],
                                  escrow_recipient=escrow) as c:
        doc = verify_document(c.archive.recipients_document,
                              Ed25519PublicKey.from_public_bytes(c.signing.public_raw()))
        assert doc.recipients == [configured, escrow]
        assert base64.b64decode(doc.sig)
