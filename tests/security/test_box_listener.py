"""The archive's HTTP attacks from issue 15's table, against the real controller: each fails.

Anonymous PUT, an empty PUT resetting the offset, a slow PUT holding the segment's lock, an
anonymous GET of receipts; plus a box reaching for another box's recording and a certificate
from another CA. The box that owns the recording still uploads (and see tests/recording and
tests/ota for the agent's uploader and updater over this listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from tests.recording.arc_support import ended_session, enroll, write_recording
from tests.support import (
    admit_box,
    box_http,
    init_ca,
    make_controller_config,
    running_controller,
)
from tiepdan.controller.service import Controller
from tiepdan.firmware.core.mqtt import TlsSettings
from tiepdan.firmware.evidence.manifest import Record, Segment
from tiepdan.provisioning.ca import CertificateAuthority, cert_pem, new_key, write_key
from tiepdan.tools.broker import Mosquitto

BOX = "box-a"


@contextlib.asynccontextmanager
async def controller(tmp_path: Path, broker: Mosquitto,
                     read_timeout: float = 30.0) -> AsyncIterator[Controller]:
    config = make_controller_config(tmp_path, broker, archive={"close_interval": 0.2},
                                    boxes={"read_timeout": read_timeout})
    init_ca(config)
    async with running_controller(config) as c:
        yield c


async def recording(c: Controller, tmp_path: Path) -> tuple[str, Path, Segment, TlsSettings]:
    """box-a's recording of an ended session, its records already archived."""
    session = await ended_session(c, BOX, "box-b")
    key = enroll(c, tmp_path / BOX, BOX)
    directory = tmp_path / "recording"
    records = write_recording(directory, device=BOX, session=session, key=key,
                              recipients=c.archive.recipients, segments=1, size=300_000)
    tls = TlsSettings(ca_file=tmp_path / BOX / "tls" / "ca.pem",
                      cert_file=tmp_path / BOX / "tls" / "device.pem",
                      key_file=tmp_path / BOX / "tls" / "device.key")
    async with box_http(tls) as http, http.post(
            f"{_base(c, session)}/records", data=_lines(records)) as reply:
        assert reply.status == 200, await reply.text()
    segment = next(r.segment for r in records if r.segment is not None)
    return session, directory / segment.name, segment, tls


def _base(c: Controller, session: str, recorder: str = BOX) -> str:
    return f"{c.boxes.url}/archive/v1/recordings/{session}/{recorder}"


def _lines(records: list[Record]) -> bytes:
    return b"".join(r.line() + b"\n" for r in records)


async def _offset(http: aiohttp.ClientSession, url: str) -> int:
    async with http.head(url) as reply:
        assert reply.status == 200
        return int(reply.headers["Upload-Offset"])


def _trusting_ca(c: Controller) -> ssl.SSLContext:
    """A client that checks the server, as anyone can (the CA certificate is public)."""
    return ssl.create_default_context(cadata=c.provisioning.authority().pem.decode())


async def test_strangers_cannot_write_or_read(tmp_path: Path, broker: Mosquitto) -> None:
    async with controller(tmp_path, broker) as c:
        session, path, segment, tls = await recording(c, tmp_path)
        url = f"{_base(c, session)}/segments/{segment.name}"
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            ("PUT", url, {"data": b"0123456789"}),
            ("PUT", url, {"data": b"", "params": {"offset": "0"}}),
            ("GET", f"{_base(c, session)}/receipts", {}),
            ("GET", _base(c, session), {}),
        ]
        # 1. no client certificate: the TLS handshake is refused
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=_trusting_ca(c))) as http:
            for method, target, kwargs in attempts:
                with pytest.raises(aiohttp.ClientError):
                    async with http.request(method, target, **kwargs) as reply:
                        await reply.read()
        # 2. plain HTTP to the same port
        plain = url.replace("https://", "http://")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.put(plain, data=b"0123456789") as reply:
                    await reply.read()
        # 3. a certificate for box-a from another CA
        rogue = CertificateAuthority.create("rogue CA")
        key = new_key()
        write_key(tmp_path / "rogue.key", key)
        (tmp_path / "rogue.pem").write_bytes(cert_pem(rogue.issue_client(key.public_key(),
                                                                         BOX, 30)))
        context = _trusting_ca(c)
        context.load_cert_chain(tmp_path / "rogue.pem", tmp_path / "rogue.key")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.put(url, data=b"0123456789") as reply:
                    await reply.read()
        # 4. the admin listener has no archive routes at all
        async with aiohttp.ClientSession() as http:
            admin = f"{c.config.api_url}/archive/v1/recordings/{session}/{BOX}/receipts"
            async with http.get(admin) as reply:
                assert reply.status == 404
            async with http.get(f"{c.config.api_url}/api/archive/recordings/{session}/{BOX}"
                                "/receipts") as reply:
                assert reply.status == 401
        # nothing reached the archive; the owner uploads as before
        async with box_http(tls) as http:
            assert await _offset(http, url) == 0
            async with http.put(url, data=path.read_bytes()) as reply:
                assert reply.status == 200
        assert [r.name for r in c.archive.receipts(session, BOX)] == [segment.name]
        # an admin reads receipts on the admin listener
        async with aiohttp.ClientSession(headers={
                "Authorization": f"Bearer {c.token}"}) as http, http.get(
                f"{c.config.api_url}/api/archive/recordings/{session}/{BOX}/receipts") as reply:
            assert reply.status == 200
            assert len((await reply.json())["receipts"]) == 1


async def test_a_box_cannot_reach_another_box_recording(tmp_path: Path,
                                                        broker: Mosquitto) -> None:
    async with controller(tmp_path, broker) as c:
        session, path, segment, _ = await recording(c, tmp_path)
        other = admit_box(c, "box-b", tmp_path / "box-b")  # a point of the same session
        url = f"{_base(c, session)}/segments/{segment.name}"
        async with box_http(other) as http:
            for method, target, data in (("PUT", url, path.read_bytes()), ("HEAD", url, None),
                                         ("GET", f"{_base(c, session)}/receipts", None),
                                         ("GET", _base(c, session), None),
                                         ("POST", f"{_base(c, session)}/records", b"")):
                async with http.request(method, target, data=data) as reply:
                    assert reply.status == 403, (method, target)
                    if method != "HEAD":
                        assert (await reply.json())["error"]["code"] == "not_your_recording"
        assert not c.archive.receipts(session, BOX)


async def test_an_empty_put_does_not_reset_the_offset(tmp_path: Path,
                                                      broker: Mosquitto) -> None:
    async with controller(tmp_path, broker) as c:
        session, path, segment, tls = await recording(c, tmp_path)
        url = f"{_base(c, session)}/segments/{segment.name}"
        data = path.read_bytes()
        half = len(data) // 2
        async with box_http(tls) as http:
            async with http.put(url, data=data[:half]) as reply:
                assert reply.status == 202
            assert await _offset(http, url) == half
            async with http.put(url, data=b"", params={"offset": "0"}) as reply:
                assert reply.status == 202
            assert await _offset(http, url) == half  # was reset to 0 before issue 15
            async with http.put(url, data=data[half:], params={"offset": str(half)}) as reply:
                assert reply.status == 200


async def _stalling(first: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await release.wait()  # then nothing: a hall's network that hangs, or a slow attacker


async def test_a_stalled_put_is_cut_and_keeps_what_arrived(
        tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with controller(tmp_path, broker, read_timeout=1.0) as c:
        session, path, segment, tls = await recording(c, tmp_path)
        url = f"{_base(c, session)}/segments/{segment.name}"
        data = path.read_bytes()
        release = asyncio.Event()
        async with box_http(tls) as http:
            stalled = asyncio.ensure_future(http.put(
                url, data=_stalling(data[:4096], release),
                headers={"Content-Length": str(len(data))}))
            try:
                async with box_http(tls) as probe:
                    for _ in range(200):
                        if await _offset(probe, url) == 4096:
                            break
                        await asyncio.sleep(0.1)
                    assert await _offset(probe, url) == 4096, "the stalled body was not cut"
            finally:
                release.set()
                with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
                    (await stalled).release()
        assert "read_timeout" in caplog.text
        async with box_http(tls) as http, http.put(url, data=data[4096:],
                                                   params={"offset": "4096"}) as reply:
            assert reply.status == 200


async def test_the_owner_takes_its_lock_back_from_a_hung_put(
        tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    async with controller(tmp_path, broker, read_timeout=300.0) as c:
        session, path, segment, tls = await recording(c, tmp_path)
        url = f"{_base(c, session)}/segments/{segment.name}"
        data = path.read_bytes()
        release = asyncio.Event()
        async with box_http(tls) as hung, box_http(tls) as fresh:
            stalled = asyncio.ensure_future(hung.put(
                url, data=_stalling(data[:4096], release),
                headers={"Content-Length": str(len(data))}))
            try:
                for _ in range(100):
                    if c.archive._uploading:  # the hung PUT holds the segment's lock
                        break
                    await asyncio.sleep(0.05)
                assert c.archive._uploading
                # the box retries on a new connection: served, not told `busy` (409)
                async with fresh.put(url, data=data) as reply:
                    assert reply.status == 200, await reply.text()
            finally:
                release.set()
                with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
                    (await stalled).release()
        assert "archive_upload_taken_over" in caplog.text
        assert [r.name for r in c.archive.receipts(session, BOX)] == [segment.name]


async def test_the_ota_repository_is_for_enrolled_boxes(tmp_path: Path,
                                                        broker: Mosquitto) -> None:
    async with controller(tmp_path, broker) as c:
        repository = c.updates.repository_path
        (repository / "metadata").mkdir(parents=True, exist_ok=True)
        (repository / "metadata" / "timestamp.json").write_text('{"signed": {}}')
        (repository.parent / "outside.txt").write_text("not for boxes")  # beside the keys
        (repository / "metadata" / "link.json").symlink_to(repository.parent / "outside.txt")
        url = f"{c.boxes.url}/ota/metadata/timestamp.json"
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=_trusting_ca(c))) as http:
            with pytest.raises(aiohttp.ClientError):  # no certificate: no handshake
                async with http.get(url) as reply:
                    await reply.read()
        async with aiohttp.ClientSession() as http, \
                http.get(f"{c.config.api_url}/ota/metadata/timestamp.json") as reply:
            assert reply.status == 404  # nothing of it on the admin listener
        tls = admit_box(c, BOX, tmp_path / BOX)
        async with box_http(tls) as http:
            async with http.get(url, headers={"Range": "bytes=2-"}) as reply:
                assert reply.status == 206 and await reply.read() == b'signed": {}}'
            for escape in ("/ota/%2e%2e/outside.txt", "/ota/metadata/%2e%2e/%2e%2e/outside.txt",
                           "/ota/metadata/link.json"):
                async with http.get(yarl.URL(c.boxes.url + escape, encoded=True)) as reply:
                    assert reply.status == 404, escape
        # a revoked box is turned away at once, without a restart
        c.identities.revoke(BOX, "stolen")
        async with box_http(tls) as http, http.get(url) as reply:
            assert reply.status == 401


async def test_a_certificate_in_a_fresh_crl_fails_the_handshake(tmp_path: Path,
                                                               broker: Mosquitto) -> None:
    async with controller(tmp_path, broker) as c:
        tls = admit_box(c, BOX, tmp_path / BOX)
        url = f"{c.boxes.url}/archive/v1/recipients"
        async with box_http(tls) as http, http.get(url) as reply:
            assert reply.status == 200
        identity = c.identities.get(BOX)
        assert identity is not None and identity.cert_serial
        # revoked in the database and written to the CRL (what `revoke` does), no restart
        with c.db.transaction():
            c.provisioning.claims.add_revoked_certificate(
                identity.cert_serial, device=BOX, not_after=time.time() + 86400,
                reason="stolen", at=time.time())
        await c.provisioning.sync_broker("test")
        async with box_http(tls) as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(url) as reply:
                    await reply.read()
