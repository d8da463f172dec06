"""Helpers for the archive, upload and closing tests: real files, real keys, real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import (
    database_settings,
    init_ca,
    issue_box_tls,
    make_controller_config,
    running_controller,
)
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, Record, Segment
from tiepdan.tools.broker import Mosquitto


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def controller_config(tmp_path: Path, broker: Mosquitto, database: Path | str = "",
                      **archive: Any) -> Any:
    """A controller with the archive's test settings and a provisioning CA (the box listener,
    where boxes upload, needs it); `database`: the `database` fixture's, for PostgreSQL."""
    config = make_controller_config(tmp_path, broker, archive={"close_interval": 0.2, **archive},
                                    database=database_settings(database))
    init_ca(config)
    return config


@contextlib.asynccontextmanager
async def archive_controller(tmp_path: Path, broker: Mosquitto, database: Path | str = "",
                             **archive: Any) -> AsyncIterator[Controller]:
    async with running_controller(controller_config(tmp_path, broker, database,
                                                    **archive)) as c:
        yield c


def register(controller: Controller, *devices: str) -> None:
    """Make boxes known to the registry, as their birth would."""
    for device in devices:
        controller.registry.on_birth(device, protocol.Birth(
            seq=1, ts=protocol.now_ms(), firmware="test", board="sim", boot_id="b",
            point=protocol.Point(kind="commune", name=f"UBND {device}"), keepalive=5))


async def ended_session(controller: Controller, host: str, *guests: str,
                        joined: tuple[str, ...] | None = None) -> str:
    """A session that took place and ended; `joined` (default: all) were live in it."""
    register(controller, host, *guests)
    session = await controller.sessions.open(host, list(guests))
    for device in (host, *guests) if joined is None else joined:
        controller.db.conn.execute("UPDATE session_points SET joined_at = 1 WHERE session = ? "
                                   "AND device = ?", (session.id, device))
    await controller.sessions.end(session.id, "test")
    return session.id


def enroll(controller: Controller, state_dir: Path, device: str) -> Ed25519PrivateKey:
    """What enrollment leaves behind: the box key bound with its certificate, the controller
    key and the TLS client certificate on the box."""
    key = Identity(state_dir).signing_key()
    _, serial = issue_box_tls(controller.config, device, state_dir)
    controller.identities.bind(device, raw_public(key), cert_serial=serial)
    pub = state_dir / "identity" / "controller.pub"
    pub.write_bytes(base64.b64encode(controller.signing.public_raw()) + b"\n")
    return key


def seal(plaintext: bytes, recipients: list[str]) -> bytes:
    sealed: bytes = pyrage.encrypt(plaintext,
                                   [pyrage.x25519.Recipient.from_str(r) for r in recipients])
    return sealed


def write_recording(directory: Path, *, device: str, session: str, key: Ed25519PrivateKey,
                    recipients: list[str], segments: int, size: int = 50_000,
                    stop: bool = True, first: int = 0) -> list[Record]:
    """A box recording as the recorder leaves it: sealed age files and a signed manifest."""
    import hashlib

    manifest = Manifest(directory / FILENAME, device=device, session=session, key=key,
                        boot_id="boot", clock_synced=lambda: True)
    records = []
    lifecycle = [r.kind for r in manifest.records if r.kind in ("start", "segment", "stop",
                                                                  "recovered")]
    if not lifecycle or lifecycle[-1] in ("stop", "recovered"):  # as the recorder on a rejoin
        records.append(manifest.append("start", detail={"tracks": "sent-video"}))
    for index in range(first, first + segments):
        plaintext = os.urandom(size)
        sealed = seal(plaintext, recipients)
        name = f"{index:06d}.mkv.age"
        tmp = directory / f"{name}.tmp"
        tmp.write_bytes(sealed)
        tmp.rename(directory / name)
        records.append(manifest.append("segment", segment=Segment(
            name=name, index=index, ct_sha256=hashlib.sha256(sealed).hexdigest(),
            ct_size=len(sealed), pt_sha256=hashlib.sha256(plaintext).hexdigest(),
            pt_size=len(plaintext), start_utc_ms=protocol.now_ms(), duration_ms=2000)))
    if stop:
        records.append(manifest.append("stop", detail={"reason": "ended"}))
    manifest.close()
    return records


def manifest_records(path: Path) -> list[Record]:
    from tiepdan.firmware.evidence.manifest import parse_line

    return [parse_line(line) for line in path.read_bytes().splitlines()]


class CutProxy:
    """A TCP proxy in front of the archive that can cut uploads after some bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_after: int | None = None  # bytes upstream per connection before cutting
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        limit = self.cut_after

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       budget: int | None) -> None:
            sent = 0
            try:
                while data := await source.read(65536):
                    if budget is not None and sent + len(data) > budget:
                        sink.write(data[:budget - sent])
                        await sink.drain()
                        self.cuts += 1
                        break
                    sink.write(data)
                    await sink.drain()
                    sent += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                for w in (writer, up_writer):
                    w.transport.abort()

        await asyncio.gather(pump(reader, up_writer, limit), pump(up_reader, writer, None))


class Interposer:
    """A fake archive in front of the real one that can rewrite what it answers.

    mode "pass": forward; "forged": receipts re-signed with a stranger's key; "replay": every
    receipt is the first one it saw (a duplicated receipt); "other-hash": a receipt properly
    signed by the controller but naming another hash.
    """

    def __init__(self, target: str, controller_key: Any, tls: Any = None) -> None:
        from aiohttp import web

        self.target = target
        self.tls = tls  # the box's client context, for the real archive's listener
        self.mode = "pass"
        self.first: bytes | None = None
        self._controller_key = controller_key
        self.app = web.Application(client_max_size=256 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def start(self) -> None:
        from aiohttp import web

        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def close(self) -> None:
        await self.runner.cleanup()

    def _rewrite(self, receipt_line: bytes) -> bytes:
        import msgspec

        from tiepdan.firmware.evidence.receipt import Receipt, sign_receipt

        if self.first is None:
            self.first = receipt_line
        receipt = msgspec.json.decode(receipt_line, type=Receipt)
        if self.mode == "forged":
            return sign_receipt(receipt, Ed25519PrivateKey.generate()).line()
        if self.mode == "replay":
            return self.first
        if self.mode == "other-hash":
            return sign_receipt(msgspec.structs.replace(receipt, ct_sha256="0" * 64),
                                self._controller_key).line()
        return receipt_line

    async def _forward(self, request: Any) -> Any:
        import aiohttp
        import msgspec
        from aiohttp import web

        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-range", "content-type")}
        async with aiohttp.ClientSession() as http, http.request(
                request.method, self.target + request.path_qs, data=body,
                headers=headers, ssl=self.tls if self.tls is not None else True) as reply:
            data = await reply.read()
            out = {k: v for k, v in reply.headers.items()
                   if k in ("Upload-Offset", "Upload-Length", "Segment-Stored",
                            protocol.ERROR_HEADER)}
            status = reply.status
        if status == 200 and "/segments/" in request.path and request.method == "PUT":
            data = self._rewrite(data)
        elif status == 200 and request.path.endswith("/receipts"):
            found = msgspec.json.decode(data)["receipts"]
            data = msgspec.json.encode({"receipts": [
                msgspec.json.decode(self._rewrite(msgspec.json.encode(r))) for r in found]})
        if request.method == "HEAD":
            return web.Response(status=status, headers=out)
        return web.Response(status=status, body=data, headers=out,
                            content_type="application/json")
