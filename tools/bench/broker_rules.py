"""Broker rules benchmark: what the subscribe checks (dynamic-security plugin) cost.

Two Mosquittos in the same run, both with provisioning's TLS listener, ACL file, CRL and limits;
one also loads the dynamic-security plugin (the fleet's configuration), the other does not (the
floor: Mosquitto 2.0's ACL file alone, which grants every SUBSCRIBE). First the plugin's broker
gets `--boxes` boxes registered in the controller's batches, as at enrollment and at every
controller start: seconds per box, and the size of the plugin's file it rewrites on each change.
Then `--subscribers` boxes connect to each broker in turn (mutual TLS, interleaved) and
subscribe to what an agent subscribes to: SUBSCRIBE to SUBACK round trip on each, and the ratio.

    python -m tiepdan.tools.bench.broker_rules --boxes 1000 --subscribers 200

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.firmware import protocol
from tiepdan.provisioning import dynsec
from tiepdan.provisioning.ca import cert_pem, new_key, write_key, write_public
from tiepdan.provisioning.material import Material, initialise
from tiepdan.provisioning.mosquitto import listener_text
from tiepdan.tools.bench.fleet import percentile
from tiepdan.tools.broker import Mosquitto

log = logging.getLogger(__name__)


def agent_filters(device: str) -> list[tuple[str, int]]:
    """What the agent subscribes to on connect (firmware/agent/agent.py and its routes)."""
    return [(protocol.device_filter(device, "cmd/+"), 1), (protocol.desired_topic(device), 1),
            (protocol.state_topic(device), 1), (protocol.job_notify_topic(device), 1),
            (protocol.device_filter(device, "call/+/down"), 1)]


def credentials(material: Material, cn: str, directory: Path) -> tuple[Path, Path]:
    key = new_key()
    cert = material.authority().issue_client(key.public_key(), cn, 1)
    write_key(directory / f"{cn}.key", key)
    write_public(directory / f"{cn}.pem", cert_pem(cert))
    return directory / f"{cn}.pem", directory / f"{cn}.key"


def subscribe_time(port: int, device: str, context: ssl.SSLContext) -> float | None:
    """Seconds from SUBSCRIBE to SUBACK for the agent's filters (after CONNACK)."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(context)
    connected, acked = threading.Event(), threading.Event()
    codes: list[int] = []

    def on_connect(c: paho.Client, userdata: object, flags: object, reason: Any,
                   properties: object) -> None:
        connected.set()

    def on_subscribe(c: paho.Client, userdata: object, mid: int, reasons: Any,
                     properties: object) -> None:
        codes.extend(int(r.value) for r in reasons)
        acked.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    try:
        client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
        deadline = time.perf_counter() + 10
        while not connected.is_set() and time.perf_counter() < deadline:
            client.loop(0.01)
        start = time.perf_counter()
        client.subscribe(agent_filters(device))
        while not acked.is_set() and time.perf_counter() < deadline:
            client.loop(0.01)
        elapsed = time.perf_counter() - start
        client.disconnect()
    except (OSError, ssl.SSLError) as exc:
        log.warning("bench_subscribe_failed client=%s error=%s", device, exc)
        return None
    if not acked.is_set() or any(code >= 0x80 for code in codes):
        log.warning("bench_subscribe_refused client=%s codes=%s", device, codes)
        return None
    return elapsed


def run(boxes: int, subscribers: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tiepdan-bench-rules-"))
    ruled, floor = Mosquitto(workdir / "ruled"), Mosquitto(workdir / "floor")
    config = msgspec.convert({"controller": {"id": "central",
                                             "data_dir": str(workdir / "controller")}},
                             ControllerConfig)
    material = material_for(config)
    initialise(material, controller="central", hosts=["127.0.0.1"], broker_port=ruled.port,
               listen_host="127.0.0.1", cert_days=2, crl_days=2)
    ruled.listeners = listener_text(material.broker, ruled.port, "127.0.0.1")
    floor.listeners = "\n".join(
        line for line in listener_text(material.broker, floor.port, "127.0.0.1").splitlines()
        if not line.startswith(("plugin ", "plugin_opt_")))
    certs = workdir / "certs"
    certs.mkdir()
    ruled.start()
    floor.start()
    try:
        admin_cn = dynsec.admin_username("controller-central")
        admin_cert, admin_key = credentials(material, admin_cn, certs)
        admin = dynsec.Admin("127.0.0.1", ruled.port, material.broker.ca, admin_cert,
                             admin_key, client_id=admin_cn, timeout=120)
        devices = [f"xa-bench-{n:05d}" for n in range(boxes)]
        started = time.perf_counter()
        admin.add_boxes(devices)
        register_s = time.perf_counter() - started
        # A burst of enrollments after that many: one batch of 16, as the controller sends.
        late = [f"xa-late-{n:02d}" for n in range(16)]
        started = time.perf_counter()
        admin.add_boxes(late)
        late_s = time.perf_counter() - started
        file_kib = material.broker.dynsec.stat().st_size / 1024

        ruled_times: list[float] = []
        floor_times: list[float] = []
        for device in devices[:subscribers]:
            cert, key = credentials(material, device, certs)
            context = ssl.create_default_context(cafile=str(material.broker.ca))
            context.load_cert_chain(str(cert), str(key))
            for port, times in ((floor.port, floor_times), (ruled.port, ruled_times)):
                elapsed = subscribe_time(port, device, context)
                if elapsed is not None:
                    times.append(elapsed)
        r50, r99 = percentile(ruled_times, 50) * 1e3, percentile(ruled_times, 99) * 1e3
        f50, f99 = percentile(floor_times, 50) * 1e3, percentile(floor_times, 99) * 1e3
        return {
            "benchmark": "broker_rules",
            "boxes": boxes,
            "register_ms_per_box": round(register_s / boxes * 1e3, 2),
            "burst_of_16_after_ms": round(late_s * 1e3, 1),
            "plugin_file_kib": round(file_kib, 1),
            "subscribers": subscribers,
            "subscribed": len(ruled_times),
            "subscribe_p50_ms": round(r50, 3),
            "subscribe_p99_ms": round(r99, 3),
            "floor_subscribe_p50_ms": round(f50, 3),
            "floor_subscribe_p99_ms": round(f99, 3),
            "subscribe_vs_floor_p50": round(r50 / f50, 2),
        }
    finally:
        ruled.stop()
        floor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.broker_rules",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.boxes, min(args.subscribers, args.boxes))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0 if result["subscribed"] == result["subscribers"] else 1


if __name__ == "__main__":
    sys.exit(main())
