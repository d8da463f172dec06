"""Campaigns: the controller's engine driving simulated boxes (real agents, real A/B roots,
real TUF over the controller's HTTP) through waves, thresholds, caps, abort and a restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w

from tests.ota.harness import box_settings
from tests.support import (
    admit_box,
    database_settings,
    eventually,
    init_ca,
    make_controller_config,
    running_controller,
)
from tiepdan.board.profile import load_profile
from tiepdan.controller.cli.client import ApiClient
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.service import Controller
from tiepdan.controller.updates.campaign import CampaignSpec, Selector, Wave
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.update import boot, slots
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.bench.fleet import CannedSensors, QuietPanel
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.simbox import SimBox, stop_all

pytestmark = pytest.mark.timeout(300)  # whole updates, on a shared 2-core machine



def ota_settings(tmp_path: Path, repo: UpdateRepository) -> dict[str, Any]:
    return {"repository": str(repo.path), "keys": str(tmp_path / "keys"), "tick": 0.2}


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, base: Path,
                count: int, controller: Controller | ControllerConfig,
                **ota: Any) -> AsyncIterator[list[SimBox]]:
    template = tmp_path / "template-root"
    slots.install_image(template, base)
    profile = load_profile("sim")
    boxes, tasks = [], []
    for n in range(count):
        device = f"xa-{n:03d}"
        root = tmp_path / f"{device}-root"
        shutil.copytree(template, root, symlinks=True)
        settings = box_settings(tmp_path, broker, device, root, repo, **ota)
        settings["device"]["province"] = "nghe-an" if n % 2 == 0 else "ha-tinh"
        admit_box(controller, device, Path(settings["state"]["dir"]))  # its certificate
        config = msgspec.convert(settings, AgentConfig)
        box = SimBox(config, profile, QuietPanel, CannedSensors())
        boxes.append(box)
        tasks.append(asyncio.create_task(box.run()))
    try:
        for box in boxes:
            await box.wait_started(20)
        yield boxes
    finally:
        await stop_all(boxes, tasks)


def spec(**overrides: Any) -> CampaignSpec:
    values: dict[str, Any] = {"target": "tiepdan-1.1.0.tar", "version": "1.1.0",
                              "download_jitter": 0.0, "notify_rate": 50.0}
    values.update(overrides)
    return CampaignSpec(**values)


async def online(controller: Controller, count: int) -> None:
    await eventually(lambda: sum(d.online for d in controller.registry.devices()) >= count, 30,
                     what=f"{count} boxes online")


async def test_a_failing_canary_halts_the_campaign_and_spares_the_rest(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    bundle = next(repo.targets_dir.glob("*.tiepdan-1.1.0.tar"))
    bundle.write_bytes(bundle.read_bytes()[:-10] + b"corrupted!")  # a bad mirror
    config = make_controller_config(tmp_path, broker, ota=ota_settings(tmp_path, repo))
    init_ca(config)
    async with running_controller(config) as controller, \
            fleet(tmp_path, broker, repo, bundles["base"], 20, controller) as boxes:
        await online(controller, 20)
        campaigns = controller.updates.campaigns
        campaign = campaigns.create(spec(waves=[
            Wave(5, max_failure_percent=0, min_finished=1), Wave(50), Wave(100)]),
            actor="alice", approved_by="bob")
        summary = await eventually(lambda: (s := campaigns.summary(campaign, boxes=True))
                                   ["state"] == "halted" and s, 60, what="the halt")
        assert "wave 0 (5 %): 1 of 1 finished boxes failed" in summary["reason"]
        canary = [b for b in summary["boxes"] if b["wave"] == 0]
        assert len(canary) == 1 and canary[0]["state"] == "failed"
        assert "LengthOrHashMismatchError" in canary[0]["reason"]
        rest = [b for b in summary["boxes"] if b["wave"] > 0]
        assert len(rest) == 19 and {b["state"] for b in rest} == {"pending"}
        await asyncio.sleep(1.5)  # a few more engine ticks: nothing moves
        assert {b["state"] for b in campaigns.summary(campaign, boxes=True)["boxes"]
                if b["wave"] > 0} == {"pending"}
        for box in boxes:
            assert box.slot == "a" and box.version == "1.0.0"
            assert not (box.root / "slots" / "b").exists()
        untouched = {b["device"] for b in rest}
        assert not [h for h in campaigns.history() if h["device"] in untouched]
        actions = [(a["actor"], a["action"]) for a in reversed(campaigns.audit())]
        assert actions == [("bob", "approved"), ("alice", "started"), ("controller", "halted")]


async def test_caps_abort_and_the_audit_log(tmp_path: Path, broker: Mosquitto,
                                            repo: UpdateRepository,
                                            bundles: dict[str, Path],
                                            database: Path | str) -> None:
    """On SQLite and on PostgreSQL (the campaigns' store, its append-only audit)."""
    repo.add_bundle(bundles["good"])
    config = make_controller_config(tmp_path, broker, ota=ota_settings(tmp_path, repo),
                                    database=database_settings(database))
    init_ca(config)
    now = time.localtime()
    closed = f"{(now.tm_hour + 2) % 24:02d}:00-{(now.tm_hour + 3) % 24:02d}:00"
    async with running_controller(config) as controller, \
            fleet(tmp_path, broker, repo, bundles["base"], 8, controller) as boxes:
        await online(controller, 8)
        campaigns = controller.updates.campaigns
        campaign = campaigns.create(spec(max_concurrent=2, window=closed,
                                         selector=Selector(province="nghe-an")), actor="alice")
        # Download ahead: every box fetches, none installs outside the window.
        await eventually(lambda: campaigns.summary(campaign, boxes=True)["waves"][0]["states"]
                         .get("in_progress") == 4, 60, what="4 boxes downloaded, waiting")
        rows = campaigns.history()
        started = {r["device"]: r["ts"] for r in rows if r["status"] == "notified"}
        done = {r["device"]: r["ts"] for r in rows if r["step"] == "downloaded"}
        assert len(started) == 4  # only the province's boxes
        for moment in started.values():  # never more than 2 downloading at once
            overlapping = [d for d, t in started.items()
                           if t <= moment < done.get(d, float("inf"))]
            assert len(overlapping) <= 2
        campaigns.abort(campaign, "carol", "bad release notes")
        summary = campaigns.summary(campaign, boxes=True)
        assert summary["state"] == "halted"
        assert summary["reason"] == "aborted by carol: bad release notes"
        assert {b["state"] for b in summary["boxes"]} == {"withdrawn"}
        await asyncio.sleep(1.0)
        assert all(b.agent is not None and b.agent.ota.status()["step"] == "idle"
                   for b in boxes[::2])
        assert all(b.slot == "a" for b in boxes)
        campaigns.resume(campaign, "alice", "notes fixed")
        await eventually(lambda: campaigns.summary(campaign)["waves"][0]["states"]
                         .get("in_progress") == 4, 60, what="re-notified after resume")
        actions = [(a["actor"], a["action"]) for a in reversed(campaigns.audit())]
        assert actions == [("alice", "started"), ("carol", "halted"), ("alice", "resumed")]
        with pytest.raises(controller.db.conn.IntegrityError, match="append-only"):
            controller.db.conn.execute("UPDATE ota_audit SET actor='mallory'")
        with pytest.raises(controller.db.conn.IntegrityError, match="append-only"):
            controller.db.conn.execute("DELETE FROM ota_audit")


async def test_controller_killed_mid_campaign_resumes_it(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    port = free_port()
    config = tmp_path / "controller.toml"
    settings = {
        "controller": {"id": "central", "data_dir": str(tmp_path / "controller")},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": False, "keepalive": 5,
                 "reconnect_min": 0.2, "reconnect_max": 1.0},
        "http": {"host": "127.0.0.1", "port": port},
        "boxes": {"host": "127.0.0.1", "port": free_port()},
        "provisioning": {"enroll_host": "127.0.0.1", "enroll_port": 0, "broker_reload": []},
        "ota": ota_settings(tmp_path, repo),
        "archive": {"trial_identity": True},
    }
    config.write_text(tomli_w.dumps(settings))
    parsed = msgspec.convert(settings, ControllerConfig)
    init_ca(parsed)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "tiepdan.controller", "--config",
                                 str(config), "run"], stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / "controller.log").open("ab"))

    process = start()
    try:
        token = tmp_path / "controller" / "admin.token"
        await eventually(token.exists, 30, what="controller token")
        api = ApiClient(f"http://127.0.0.1:{port}", token.read_text().strip())

        def ready() -> bool:
            try:
                return bool(api.get("/api/stats")["online"] >= 6)
            except Exception:
                return False

        # Patient boxes, as in the field: their retries outlast the controller's restart.
        async with fleet(tmp_path, broker, repo, bundles["base"], 6, parsed, download_attempts=6,
                         retry_delay=1.0) as boxes:
            await eventually(ready, 30, what="6 boxes at the controller")
            created = api.call("POST", "/api/ota/campaigns", body={
                "spec": msgspec.to_builtins(spec(waves=[Wave(34), Wave(100)],
                                                 max_concurrent=1)),
                "actor": "alice"})
            campaign = created["id"]

            def states() -> dict[str, int]:
                try:
                    summary = api.get(f"/api/ota/campaigns/{campaign}")
                except Exception:
                    return {}
                counts: dict[str, int] = {}
                for b in summary["boxes"]:
                    counts[b["state"]] = counts.get(b["state"], 0) + 1
                return counts

            await eventually(lambda: states().get("succeeded", 0) >= 1, 90,
                             what="a first box updated")
            process.kill()  # kill -9, mid-campaign
            process.wait()
            before = states() or {}
            process = start()
            await eventually(lambda: states().get("succeeded") == 6, 120,
                             what=f"every box updated after the restart (was {before})")
            summary = api.get(f"/api/ota/campaigns/{campaign}")
            assert summary["state"] == "completed"
            assert all(b.slot == "b" and b.version == "1.1.0" for b in boxes)
            assert all(boot.read_state(b.root)["committed"] == "b" for b in boxes)
            history = api.get("/api/ota/history", device=boxes[0].config.device.id)
            assert {"notified", "succeeded"} <= {h["status"] for h in history}
            audit = [a["action"] for a in reversed(api.get("/api/ota/audit"))]
            assert audit[0] == "started" and audit[-1] == "completed"
            assert "wave_started" in audit
    finally:
        process.kill()
        process.wait()
