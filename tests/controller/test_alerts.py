"""Alerts without Prometheus: the rules of rules.yml evaluated by the controller, deduplicated,
with resolve notices, delivered to a real webhook receiver (aiohttp on loopback) that may be
down, and listed at /api/alerts."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import eventually, make_controller_config, running_controller
from tiepdan.controller.alerts.alerts import Alerts
from tiepdan.controller.alerts.rules import RULES, VIETNAM, in_office_hours
from tiepdan.controller.cli.client import ApiClient
from tiepdan.controller.config import AlertsSection
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.metrics.metrics import Metrics
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
# Thursday 2026-12-03 09:00 in Vietnam: office hours.
OFFICE = datetime(2026, 12, 3, 9, 0, tzinfo=VIETNAM).timestamp()


class Receiver:
    """A webhook receiver: keeps what it is sent; answers `status` (503 plays 'down')."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status)
        self.received.append(await request.json())
        return web.Response(text="ok")

    def seen(self) -> list[tuple[str, str, str]]:
        return [(d["status"], d["alerts"][0]["labels"]["alertname"],
                 d["alerts"][0]["labels"].get("device", "")) for d in self.received]


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield r
    finally:
        await runner.cleanup()


def health(free: int, synced: bool = True) -> protocol.Health:
    return protocol.Health(ts=0, uptime_s=1, cpu_percent=5, mem_percent=5, disk_free_bytes=free,
                           disk_total_bytes=100, load1=0.1, clock_synced=synced)


def birth(seq: int = 0) -> protocol.Birth:
    return protocol.Birth(seq=seq, ts=0, firmware="1", board="sim", boot_id="b", keepalive=10,
                          point=protocol.Point(kind="commune", name="UBND", province="na",
                                               commune="x"))


def test_the_rules_are_the_ones_in_rules_yml() -> None:
    text = (ROOT / "controller" / "metrics" / "rules.yml").read_text()
    blocks = re.split(r"\n      - alert: ", text)[1:]
    yaml_rules = {}
    for block in blocks:
        name = block.split("\n", 1)[0].strip()
        duration = re.search(r"\n        for: (\d+)m", block)
        severity = re.search(r"severity: (\w+)", block)
        summary = re.search(r'summary: "(.*)"', block)
        assert severity and summary
        yaml_rules[name] = (severity.group(1), int(duration.group(1)) * 60 if duration else 0,
                            re.sub(r"\{\{ \$labels\.(\w+) \}\}", r"{\1}", summary.group(1)))
    ours = {r.name: (r.severity, int(r.for_s), r.summary) for r in RULES}
    assert ours == yaml_rules
    for rule in RULES:  # each reads a metric the YAML reads too
        assert rule.metric in text


def test_office_hours_are_vietnam_weekdays() -> None:
    assert in_office_hours(0)  # Thursday 07:00 in Vietnam, as promtool's test also says
    assert not in_office_hours(630 * 60)  # 17:30
    assert in_office_hours(OFFICE)
    assert not in_office_hours(OFFICE + 2 * 86400)  # Saturday


async def test_fires_once_resolves_and_survives_a_webhook_that_is_down(
        database: Path | str) -> None:
    db = Database(database)
    registry = Registry(db)
    metrics = Metrics(registry, db.conn, lambda: ({}, 0), dict, lambda: 0)
    async with receiver() as hook, aiohttp.ClientSession() as http:
        alerts = Alerts(db, AlertsSection(webhook_url=hook.url), metrics.collect, "central")
        registry.on_birth("xa-disk", birth())
        registry.on_health("xa-disk", health(free=5))
        assert alerts.evaluate(OFFICE) == (1, 0)
        assert await alerts.deliver(http) == 1
        assert alerts.evaluate(OFFICE + 30) == (0, 0)  # still holding: no second alert
        assert await alerts.deliver(http) == 0
        assert hook.seen() == [("firing", "DiskLow", "xa-disk")]
        first = hook.received[0]
        assert first["version"] == "4"
        assert "dưới 10 %" in first["alerts"][0]["annotations"]["summary"]

        hook.status = 503  # the receiver is down when the disk recovers
        registry.on_health("xa-disk", health(free=50))
        assert alerts.evaluate(OFFICE + 60) == (0, 1)
        assert await alerts.deliver(http) == 0
        [row] = alerts.list(active_only=False)
        assert row["state"] == "resolved" and row["attempts"] == 2 and "503" in row["last_error"]
        hook.status = 200
        assert await alerts.deliver(http) == 1
        assert hook.seen() == [("firing", "DiskLow", "xa-disk"), ("resolved", "DiskLow",
                                                                   "xa-disk")]
        assert hook.received[1]["alerts"][0]["endsAt"].startswith("2026-12-03T02:01")
        assert alerts.list() == []
    db.close()


async def test_a_lost_box_waits_its_ten_minutes_and_office_hours(database: Path | str) -> None:
    db = Database(database)
    registry = Registry(db)
    metrics = Metrics(registry, db.conn, lambda: ({}, 0), dict, lambda: 0)
    alerts = Alerts(db, AlertsSection(), metrics.collect, "central")
    registry.on_birth("xa-gone", birth(seq=3))
    registry.on_state("xa-gone", protocol.DeviceState(state="lost", seq=3, ts=0))
    evening = OFFICE + 10 * 3600  # 19:00
    assert alerts.evaluate(evening) == (0, 0)
    assert alerts.evaluate(evening + 3600) == (0, 0)
    assert alerts.evaluate(OFFICE + 86400) == (0, 0)  # next morning: pending from now on
    assert alerts.evaluate(OFFICE + 86400 + 300) == (0, 0)
    assert alerts.evaluate(OFFICE + 86400 + 601) == (1, 0)
    [row] = alerts.list()
    assert row["rule"] == "BoxLost" and row["labels"]["device"] == "xa-gone"
    assert row["started"] == OFFICE + 86400
    registry.on_birth("xa-gone", birth(seq=4))
    assert alerts.evaluate(OFFICE + 86400 + 700) == (0, 1)
    assert alerts.prune(OFFICE + 86400 + 89 * 86400) == 0
    assert alerts.prune(OFFICE + 86400 + 91 * 86400) == 1  # no webhook: nothing to wait for
    assert alerts.list(active_only=False) == []
    db.close()


async def test_the_running_controller_alerts_the_webhook_and_lists_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with receiver() as hook:
        config = make_controller_config(tmp_path, broker,
                                        alerts={"interval": 0.2, "webhook_url": hook.url})
        async with running_controller(config) as controller:
            now = time.time()
            controller.db.conn.execute(
                "INSERT INTO provisioned_boxes (device, commune, hall, token_hash, "
                "token_expires, created_at, enrolled_at, cert_not_after) "
                "VALUES ('xa-cert', 'c', 'h', 'x', ?, ?, ?, ?)",
                (now + 60, now, now, now + 10 * 86400))
            await eventually(lambda: hook.received, timeout=30, what="the webhook's notice")
            assert hook.seen() == [("firing", "CertificateExpiring", "xa-cert")]
            client = ApiClient.from_config(config)
            listed = await asyncio.to_thread(client.get, "/api/alerts")
            assert [(a["rule"], a["labels"]["device"], a["state"]) for a in listed] == [
                ("CertificateExpiring", "xa-cert", "firing")]
            assert listed[0]["sent_firing"] is not None
            with pytest.raises(Exception, match="400"):
                await asyncio.to_thread(client.get, "/api/alerts", state="odd")
