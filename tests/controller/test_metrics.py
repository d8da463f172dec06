"""/metrics: box figures from telemetry over the real broker, command latency, campaigns,
enrollments and certificate expiry from the database; the alert rules pass `promtool`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    eventually,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.controller.cli.client import ApiClient
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.metrics.metrics import Metrics
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "controller" / "metrics" / "rules.yml"
FIXTURES = Path(__file__).parent / "fixtures"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def self_signed(not_after: float) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(datetime.fromtimestamp(not_after - 86400 * 30, UTC))
            .not_valid_after(datetime.fromtimestamp(not_after, UTC))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def scrape(url: str, token: str | None) -> str:
    request = urllib.request.Request(f"{url}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


async def test_box_figures_arrive_by_telemetry_and_commands_are_timed(
        tmp_path: Path, broker: Mosquitto) -> None:
    config = make_controller_config(tmp_path, broker)
    async with running_controller(config) as controller:
        url = ApiClient.from_config(config).url
        async with running_agent(make_agent_config(tmp_path, broker, "xa-met")):
            await eventually(lambda: (d := controller.registry.get("xa-met")) is not None
                             and d.health is not None, timeout=30, what="xa-met's health")
            client = ApiClient.from_config(config)
            answer = await asyncio.to_thread(client.call, "POST",
                                             "/api/devices/xa-met/commands/ping", {})
            assert answer["ok"] is True
            samples = parse(await asyncio.to_thread(scrape, url, controller.token))
            assert value(samples, "tiepdan_box_state", device="xa-met", province="unknown",
                         state="ready") == 1
            assert value(samples, "tiepdan_boxes", province="unknown", state="ready") == 1
            cpu = value(samples, "tiepdan_box_cpu_percent", device="xa-met")
            assert cpu is not None and 0 <= cpu <= 6400
            free = value(samples, "tiepdan_box_disk_free_ratio", device="xa-met")
            assert free is not None and 0 < free <= 1
            assert (value(samples, "tiepdan_mqtt_messages_received_total", kind="tele")
                    or 0) >= 1
            assert value(samples, "tiepdan_command_duration_seconds_count", command="ping",
                         outcome="ok") == 1
        await eventually(lambda: getattr(controller.registry.get("xa-met"), "state", "")
                         == "disconnected",
                         timeout=30, what="xa-met's goodbye")
        samples = parse(await asyncio.to_thread(scrape, url, controller.token))
        assert value(samples, "tiepdan_box_state", device="xa-met", province="unknown",
                     state="disconnected") == 1
        # A box that left stops its health series rather than repeating its last reading.
        assert value(samples, "tiepdan_box_cpu_percent", device="xa-met") is None
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(scrape, url, None)
        assert refused.value.code == 401


def test_campaigns_enrollments_and_certificates_come_from_the_database(
        tmp_path: Path, database: Path | str) -> None:
    db = Database(database)
    now = time.time()
    c = db.conn
    for cid, state in (("c-halt", "halted"), ("c-run", "running"), ("c-done", "completed")):
        c.execute("INSERT INTO ota_campaigns (id, state, spec, created, updated) "
                  "VALUES (?, ?, '{}', 0, 0)", (cid, state))
    for device, state in (("xa-1", "succeeded"), ("xa-2", "failed"), ("xa-3", "failed")):
        c.execute("INSERT INTO ota_boxes (campaign, device, wave, state) VALUES "
                  "('c-halt', ?, 0, ?)", (device, state))
    c.execute("INSERT INTO ota_boxes (campaign, device, wave, state) VALUES "
              "('c-done', 'xa-1', 0, 'succeeded')")
    boxes = [("xa-1", now - 10, None, now + 86400, now + 10 * 86400),
             ("xa-2", now - 10, None, now + 86400, now + 300 * 86400),
             ("xa-3", None, None, now + 86400, None),
             ("xa-4", None, None, now - 1, None),
             ("xa-5", now - 10, now - 5, now + 86400, now + 86400)]
    for i, (device, enrolled, revoked, token_expires, not_after) in enumerate(boxes):
        c.execute("INSERT INTO provisioned_boxes (device, commune, hall, token_hash, "
                  "token_expires, created_at, enrolled_at, revoked_at, cert_not_after) "
                  "VALUES (?, 'c', 'h', ?, ?, 0, ?, ?, ?)",
                  (device, f"hash{i}", token_expires, enrolled, revoked, not_after))
    registry = Registry(db)
    registry.on_birth("xa-1", protocol.Birth(
        seq=0, ts=0, firmware="1", board="sim", boot_id="b", keepalive=10,
        point=protocol.Point(kind="commune", name="UBND", province="nghe-an", commune="x")))
    broker_cert = tmp_path / "broker.pem"
    broker_cert.write_bytes(self_signed(now + 5 * 86400))
    metrics = Metrics(registry, db.conn, lambda: ({"tele": 3}, 1),
                      lambda: {"xa-1": (2, 1000), "controller-central": (1, 500)}, lambda: 4,
                      {"broker": broker_cert, "enrollment": tmp_path / "not-made-yet.pem"})
    samples = parse(metrics.render()[0].decode())
    assert value(samples, "tiepdan_campaign_state", campaign="c-halt", state="halted") == 1
    assert value(samples, "tiepdan_campaign_state", campaign="c-run", state="running") == 1
    assert value(samples, "tiepdan_campaign_state", campaign="c-done", state="completed") is None
    assert value(samples, "tiepdan_campaign_boxes", campaign="c-halt", state="failed") == 2
    assert value(samples, "tiepdan_enrollments", state="enrolled") == 2
    assert value(samples, "tiepdan_enrollments", state="waiting") == 1
    assert value(samples, "tiepdan_enrollments", state="expired") == 1
    assert value(samples, "tiepdan_enrollments", state="revoked") == 1
    assert value(samples, "tiepdan_box_certificate_not_after_seconds",
                 device="xa-1") == pytest.approx(now + 10 * 86400)
    assert value(samples, "tiepdan_box_certificate_not_after_seconds", device="xa-5") is None
    assert value(samples, "tiepdan_boxes", province="nghe-an", state="ready") == 1
    assert value(samples, "tiepdan_archive_bytes") == 1500
    assert value(samples, "tiepdan_archive_uploaded_bytes_total", recorder="xa-1") == 1000
    assert value(samples, "tiepdan_sessions_closed_total") == 4
    assert value(samples, "tiepdan_mqtt_messages_rejected_total") == 1
    assert value(samples, "tiepdan_certificate_not_after_seconds",
                 name="broker") == pytest.approx(int(now + 5 * 86400), abs=1)
    assert value(samples, "tiepdan_certificate_not_after_seconds", name="enrollment") is None
    db.close()


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: tools/dev installs Debian's prometheus"
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           check=False, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "7 rules found" in check.stdout
    # And they fire when they should (office hours included): promtool's own rule tests.
    tests = subprocess.run([promtool, "test", "rules", "rules_test.yml"], capture_output=True,
                           check=False, text=True, timeout=60, cwd=FIXTURES)
    assert tests.returncode == 0, tests.stdout + tests.stderr
