"""Enrollment benchmark: N simulated boxes enroll, then connect over mutual TLS.

The real controller (`tiepdan-controller run`) with its HTTPS enrollment endpoint and a real
Mosquitto with provisioning's TLS listener, set up as `tiepdan-provision ca init` does. Each
simulated box has its own P-256 TLS key and Ed25519 signing key (made before the clock starts:
on a real fleet every box makes its own in parallel), a claim token from the admin API, and
sends its CSR over its own new HTTPS connection, `--concurrency` boxes at a time. Printed:
boxes enrolled per second and the enrollment round trip, against the floor of the same number of
HTTPS requests the endpoint refuses at once (transport and TLS only); then, for every box, the time
to connect to the broker (TCP, TLS handshake with both certificates, MQTT CONNECT/CONNACK)
against the same MQTT connect over plain TCP to a second Mosquitto in the same run, the floor.

    python -m tiepdan.tools.bench.enrollment --boxes 500

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import paho.mqtt.client as paho
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.firmware import protocol
from tiepdan.firmware.firstboot.enroll import make_csr
from tiepdan.provisioning.ca import key_pem, new_key
from tiepdan.provisioning.material import initialise
from tiepdan.provisioning.mosquitto import listener_text
from tiepdan.tools.bench.fleet import percentile, raise_fd_limit
from tiepdan.tools.broker import Mosquitto, free_port

log = logging.getLogger(__name__)


@dataclass
class Box:
    device: str
    key_pem: bytes
    csr: str
    sign_key: str
    signer: Ed25519PrivateKey
    token: str = ""
    certificate: str = ""


def make_boxes(count: int) -> list[Box]:
    boxes = []
    for n in range(count):
        device = f"xa-bench-{n:05d}"
        key = new_key()
        signer = Ed25519PrivateKey.generate()
        sign = signer.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        boxes.append(Box(device, key_pem(key), make_csr(key, device),
                         base64.b64encode(sign).decode(), signer))
    return boxes


async def https_floor(count: int, url: str, ca_pem: bytes, concurrency: int) -> float:
    """The floor: the same HTTPS request shape (new connection, TLS handshake, POST) that the
    endpoint refuses at once (an empty body), so no CSR check, signing or database write."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession) -> None:
        async with gate, session.post(url, data=b"{}", ssl=context) as reply:
            await reply.read()

    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(count)))
        return time.perf_counter() - start


async def enroll_all(boxes: list[Box], url: str, ca_pem: bytes,
                     concurrency: int) -> tuple[float, list[float]]:
    """Every box on its own HTTPS connection (a new TLS handshake each), `concurrency` at once."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(session: aiohttp.ClientSession, box: Box) -> None:
        proof = box.signer.sign(protocol.enroll_challenge(box.device, box.token, box.csr,
                                                           box.sign_key))
        request = protocol.EnrollRequest(device=box.device, commune="bench", token=box.token,
                                         csr=box.csr, sign_key=box.sign_key,
                                         sign_proof=base64.b64encode(proof).decode())
        async with gate:
            start = time.perf_counter()
            async with session.post(url, data=protocol.encode(request), ssl=context) as reply:
                body = await reply.read()
            latencies.append(time.perf_counter() - start)
        if reply.status != 200:
            log.warning("bench_enroll_failed device=%s status=%d body=%s", box.device,
                        reply.status, body[:200])
            return
        box.certificate = protocol.decode(body, protocol.EnrollResponse).certificate

    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session, box) for box in boxes))
        return time.perf_counter() - start, latencies


def mqtt_connect(port: int, client_id: str, context: ssl.SSLContext | None) -> float | None:
    """Seconds from TCP connect to CONNACK (TLS handshake included when `context` is given)."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    if context is not None:
        client.tls_set_context(context)
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: Any,
                   properties: object) -> None:
        ok.append(not reason.is_failure)
        done.set()

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    start = time.perf_counter()
    try:
        client.connect("127.0.0.1", port, keepalive=30, clean_start=True, properties=properties)
        while not done.is_set() and time.perf_counter() - start < 10:
            client.loop(0.01)
        elapsed = time.perf_counter() - start
        client.disconnect()
    except (OSError, ssl.SSLError) as exc:
        log.warning("bench_connect_failed client=%s error=%s", client_id, exc)
        return None
    return elapsed if ok and ok[0] else None


def connect_all(boxes: list[Box], workdir: Path, tls_port: int, plain_port: int,
                ca_file: Path) -> tuple[list[float], list[float]]:
    """Each enrolled box connects once over mutual TLS and once over plain TCP, interleaved so
    both see the same machine load."""
    tls_times, plain_times = [], []
    for box in boxes:
        if not box.certificate:
            continue
        cert, key = workdir / f"{box.device}.pem", workdir / f"{box.device}.key"
        cert.write_text(box.certificate)
        key.write_bytes(box.key_pem)
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(cert), str(key))
        plain = mqtt_connect(plain_port, box.device, None)
        secure = mqtt_connect(tls_port, box.device, context)
        if plain is not None:
            plain_times.append(plain)
        if secure is not None:
            tls_times.append(secure)
    return tls_times, plain_times


def run(count: int, concurrency: int) -> dict[str, Any]:
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tiepdan-bench-enroll-"))
    tls_broker = Mosquitto(workdir / "broker")
    plain_broker = Mosquitto(workdir / "plain-broker")
    http_port, enroll_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "controller": {"id": "central", "data_dir": str(workdir / "controller")},
        "mqtt": {"host": "127.0.0.1", "port": tls_broker.port, "tls": True},
        "http": {"host": "127.0.0.1", "port": http_port},
        "log": {"level": "warning"},
        "archive": {"trial_identity": True},  # a benchmark, not a deployment
        "provisioning": {"broker_host": "127.0.0.1", "enroll_host": "127.0.0.1",
                         "enroll_port": enroll_port, "enroll_rate": 100_000,
                         "enroll_burst": 1_000_000, "renew_host": "127.0.0.1",
                         "renew_port": free_port(),
                         "broker_reload": tls_broker.reload_command()},
    }
    config = msgspec.convert(settings, ControllerConfig)
    material = material_for(config)
    initialise(material, controller="central", hosts=["127.0.0.1"], broker_port=tls_broker.port,
               listen_host="127.0.0.1", cert_days=30, crl_days=30)
    tls_broker.listeners = listener_text(material.broker, tls_broker.port, "127.0.0.1")
    tls_broker.start()
    plain_broker.start()
    (workdir / "controller.toml").write_text(tomli_w.dumps(settings))
    controller = subprocess.Popen(
        [sys.executable, "-m", "tiepdan.controller", "--config", str(workdir / "controller.toml"),
         "run"], stdout=subprocess.DEVNULL, stderr=(workdir / "controller.log").open("wb"))
    try:
        token = workdir / "controller" / "admin.token"
        deadline = time.monotonic() + 30
        while not token.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        api = ApiClient(f"http://127.0.0.1:{http_port}", token.read_text().strip())
        while True:  # the token is written before the API listens
            try:
                api.get("/api/provisioning/boxes")
                break
            except ApiError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        boxes = make_boxes(count)
        started = time.perf_counter()
        for box in boxes:
            answer = api.call("POST", "/api/provisioning/boxes",
                              body={"device": box.device, "commune": "bench", "hall": "Bench"})
            box.token = answer["token"]
        tokens_s = time.perf_counter() - started
        url = f"https://127.0.0.1:{enroll_port}{protocol.ENROLL_PATH}"
        ca_pem = material.ca_cert.read_bytes()
        enroll_s, latencies = asyncio.run(enroll_all(boxes, url, ca_pem, concurrency))
        floor_s = asyncio.run(https_floor(count, url, ca_pem, concurrency))
        enrolled = sum(1 for box in boxes if box.certificate)
        (workdir / "boxes").mkdir()
        tls, plain = connect_all(boxes, workdir / "boxes", tls_broker.port, plain_broker.port,
                                 material.broker.ca)
        t50, t99 = percentile(tls, 50) * 1e3, percentile(tls, 99) * 1e3
        p50, p99 = percentile(plain, 50) * 1e3, percentile(plain, 99) * 1e3
        return {
            "benchmark": "enrollment",
            "boxes": count,
            "enrolled": enrolled,
            "concurrency": concurrency,
            "tokens_per_s": round(count / tokens_s, 1),
            "enroll_s": round(enroll_s, 2),
            "boxes_enrolled_per_s": round(enrolled / enroll_s, 1),
            "https_floor_per_s": round(count / floor_s, 1),
            "enroll_vs_floor": round((enrolled / enroll_s) / (count / floor_s), 2),
            "enroll_rtt_p50_ms": round(percentile(latencies, 50) * 1e3, 1),
            "enroll_rtt_p99_ms": round(percentile(latencies, 99) * 1e3, 1),
            "tls_connects": len(tls),
            "tls_connect_p50_ms": round(t50, 2),
            "tls_connect_p99_ms": round(t99, 2),
            "plain_connect_p50_ms": round(p50, 2),
            "plain_connect_p99_ms": round(p99, 2),
            "tls_vs_plain_p50": round(t50 / p50, 2),
            "tls_vs_plain_p99": round(t99 / p99, 2),
        }
    finally:
        controller.terminate()
        controller.wait(15)
        tls_broker.stop()
        plain_broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.enrollment",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="enrollments in flight at once (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.boxes, args.concurrency)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0 if result["enrolled"] == args.boxes == result["tls_connects"] else 1


if __name__ == "__main__":
    sys.exit(main())
