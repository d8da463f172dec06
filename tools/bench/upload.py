"""Recording upload benchmark: the box's uploader against a raw HTTP PUT of the same bytes.

A real controller (archive, SQLite index, its box listener with mutual TLS) and Mosquitto run
in this process; a box recording of N sealed segments (real age files, a signed manifest) is
uploaded by the real `Uploader` (records, HEAD, PUT, receipt verification, `uploaded` records;
deletion grace kept long so nothing is deleted during the timing), showing the box's client
certificate. In the same run the same bytes go by bare aiohttp PUTs to a server that writes and
fsyncs each file, once over mutual TLS with the same certificates (the floor the ratio is
against: what the archive's checks and the uploader's bookkeeping cost on top of moving the
bytes over the same channel) and once over plain HTTP (what TLS itself costs).

    python -m tiepdan.tools.bench.upload --segments 40 --size-kb 512

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pyrage
from aiohttp import web
from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import Panel
from tiepdan.board.profile import load_profile
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.controller.http.boxes import server_context
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.core.mqtt import client_context
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, Segment
from tiepdan.firmware.recording.uploader import Uploader
from tiepdan.provisioning.ca import cert_pem, new_key, serial_hex, write_key, write_public
from tiepdan.provisioning.material import Material, initialise
from tiepdan.tools.broker import Mosquitto, free_port

BOX = "bench-box"


def _recording(directory: Path, session: str, key: Any, recipients: list[str], count: int,
               size: int) -> int:
    manifest = Manifest(directory / FILENAME, device=BOX, session=session, key=key,
                        boot_id="bench", clock_synced=lambda: True)
    manifest.append("start")
    total = 0
    parsed = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    for index in range(count):
        plain = os.urandom(size)
        sealed = pyrage.encrypt(plain, parsed)
        name = f"{index:06d}.mkv.age"
        (directory / name).write_bytes(sealed)
        total += len(sealed)
        manifest.append("segment", segment=Segment(
            name=name, index=index, ct_sha256=hashlib.sha256(sealed).hexdigest(),
            ct_size=len(sealed), pt_sha256=hashlib.sha256(plain).hexdigest(),
            pt_size=size, start_utc_ms=protocol.now_ms(), duration_ms=2000))
    manifest.append("stop")
    manifest.close()
    return total


async def _raw_put(files: list[Path], target: Path, server_tls: Any = None,
                   client_tls: Any = None) -> float:
    async def put(request: web.Request) -> web.Response:
        path = target / request.match_info["name"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            async for chunk in request.content.iter_chunked(256 * 1024):
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_put("/{name}", put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    scheme = "https" if server_tls is not None else "http"
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=client_tls if client_tls is not None else True)) as http:
        for path in files:
            async with http.put(f"{scheme}://127.0.0.1:{port}/{path.name}",
                                data=path.read_bytes()) as reply:
                await reply.read()
    elapsed = time.perf_counter() - started
    await runner.cleanup()
    return elapsed


def _box_certificate(material: Material, state: Path) -> str:
    """What enrollment leaves on the box: its TLS key and certificate, and the CA."""
    key = new_key()
    cert = material.authority().issue_client(key.public_key(), BOX, 30)
    write_key(state / "tls" / "device.key", key)
    write_public(state / "tls" / "device.pem", cert_pem(cert))
    write_public(state / "tls" / "ca.pem", material.authority().pem)
    return serial_hex(cert)


async def bench(segments: int, size: int, workdir: Path) -> dict[str, Any]:
    with Mosquitto(workdir / "broker") as broker:
        config = msgspec.convert({
            "controller": {"id": "central", "data_dir": str(workdir / "controller")},
            "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "boxes": {"host": "127.0.0.1", "port": free_port()},
            "provisioning": {"enroll_host": "127.0.0.1", "enroll_port": 0,
                             "broker_reload": []},
            "log": {"level": "warning"},
            "archive": {"record_bridge": False, "close_interval": 3600,
                        "trial_identity": True}}, ControllerConfig)
        material = material_for(config)
        initialise(material, controller="central", hosts=["127.0.0.1"],
                   broker_port=broker.port, listen_host="127.0.0.1", cert_days=30, crl_days=30)
        controller = Controller(config)
        ready = asyncio.Event()
        task = asyncio.create_task(controller.run(ready))
        await ready.wait()
        async with asyncio.timeout(30):
            await controller.boxes.started.wait()
        try:
            controller.registry.on_birth(BOX, protocol.Birth(
                seq=1, ts=protocol.now_ms(), firmware="bench", board="sim", boot_id="b",
                point=protocol.Point(kind="commune", name="bench"), keepalive=5))
            controller.registry.on_birth("bench-other", protocol.Birth(
                seq=1, ts=protocol.now_ms(), firmware="bench", board="sim", boot_id="b",
                point=protocol.Point(kind="commune", name="bench"), keepalive=5))
            session = (await controller.sessions.open(BOX, ["bench-other"])).id
            # the box took part (a session nobody joined closes at once, empty, and then
            # takes no recording)
            controller.db.conn.execute("UPDATE session_points SET joined_at = 1 WHERE "
                                       "session = ? AND device = ?", (session, BOX))
            await controller.sessions.end(session, "bench")
            state = workdir / "box"
            key = Identity(state).signing_key()
            controller.identities.bind(BOX, Identity(state).signing_public_raw(),
                                       cert_serial=_box_certificate(material, state))
            (state / "identity" / "controller.pub").write_bytes(
                base64.b64encode(controller.signing.public_raw()) + b"\n")
            agent_config = msgspec.convert({
                "device": {"id": BOX, "name": "bench"}, "board": {"profile": "sim"},
                "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
                "state": {"dir": str(state)},
                "recording": {"enabled": False, "archive_url": controller.boxes.url,
                              "delete_grace": 86400}}, AgentConfig)
            profile = load_profile("sim")
            agent = Agent(agent_config, profile=profile,
                          panel=Panel(profile, pin_factory=MockFactory()))
            directory = agent_config.recording_dir / session
            directory.mkdir(parents=True)
            total = _recording(directory, session, key, controller.archive.recipients,
                               segments, size)
            uploader = Uploader(agent, agent.recipients)
            started = time.perf_counter()
            report = await uploader.sync()
            upload_s = time.perf_counter() - started
            if report.errors or report.uploaded != segments:
                raise SystemExit(f"upload failed: {report}")
            files = sorted(directory.glob("*.age"))
            raw_tls_s = await _raw_put(files, workdir / "raw", server_context(material),
                                       client_context(agent_config.box_tls()))
            raw_s = await _raw_put(files, workdir / "raw")
            agent.panel.close()
        finally:
            controller.request_stop()
            await task
    mb = total / 1e6
    return {"segments": segments, "segment_bytes": total // segments, "total_mb": round(mb, 2),
            "uploader_s": round(upload_s, 3), "uploader_mb_s": round(mb / upload_s, 1),
            "raw_tls_put_s": round(raw_tls_s, 3), "raw_tls_put_mb_s": round(mb / raw_tls_s, 1),
            "raw_put_s": round(raw_s, 3), "raw_put_mb_s": round(mb / raw_s, 1),
            "ratio": round(raw_tls_s / upload_s, 3), "tls_ratio": round(raw_s / raw_tls_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--size-kb", type=int, default=512,
                        help="plaintext per segment (2 s of a 1.5 Mbit/s session is ~400 KB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tiepdan-upload-") as tmp:
        workdir = Path(tmp)
        (workdir / "raw").mkdir()
        figures = asyncio.run(bench(args.segments, args.size_kb * 1024, workdir))
    print(f"uploader: {figures['total_mb']} MB in {figures['segments']} segments, "
          f"{figures['uploader_s']} s = {figures['uploader_mb_s']} MB/s")
    print(f"raw PUT, mutual TLS: same bytes, {figures['raw_tls_put_s']} s = "
          f"{figures['raw_tls_put_mb_s']} MB/s")
    print(f"raw PUT, plain HTTP: same bytes, {figures['raw_put_s']} s = "
          f"{figures['raw_put_mb_s']} MB/s")
    print(f"ratio (uploader / raw mutual-TLS throughput): {figures['ratio']}")
    print(f"TLS cost (raw TLS / raw plain throughput): {figures['tls_ratio']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
