"""Whole updates of a box running as its own process from its slot, supervised as systemd
would (restart on exit), against a real broker and a TUF repository over HTTP: the new version's
code really runs, crashes, fails its check or hangs, and the box comes back by itself."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.ota.harness import (
    RepoServer,
    SupervisedBox,
    box_settings,
    job,
    new_box_root,
    notify,
    updates,
    wait_final,
    watch_updates,
    write_box_config,
)
from tests.support import Observer, eventually
from tiepdan.firmware.update import boot, slots
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.broker import Mosquitto

pytestmark = pytest.mark.timeout(300)  # whole updates, on a shared 2-core machine


DEVICE = "xa-proc"


@contextlib.asynccontextmanager
async def supervised(tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
                     bundles: dict[str, Path], **ota: Any) -> AsyncIterator[SupervisedBox]:
    root = new_box_root(tmp_path, DEVICE, bundles["base"])
    config = write_box_config(tmp_path, box_settings(tmp_path, broker, DEVICE, root, repo, **ota))
    box = SupervisedBox(root, config).start()
    try:
        yield box
    finally:
        await asyncio.to_thread(box.stop)


@contextlib.asynccontextmanager
async def controller_side(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with Observer(broker, "test-controller") as obs:
        await watch_updates(obs)
        yield obs


async def test_update_survives_kill_during_download_and_resumes(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    size = bundles["good"].stat().st_size
    server.rate = size / 6  # about six seconds for the whole bundle
    partial = tmp_path / DEVICE / "ota" / "partial"
    async with controller_side(broker) as obs, \
            supervised(tmp_path, broker, repo, bundles) as box:
        await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))
        await eventually(lambda: any(p.stat().st_size > size // 4 for p in partial.glob("*.part")),
                         60, what="a quarter of the bundle on disk")
        box.kill9()
        kept = max(p.stat().st_size for p in partial.glob("*.part"))
        assert 0 < kept < size
        server.rate = None
        box.start()
        result = await wait_final(obs, DEVICE, "j1", 120, box)
        assert result.status == "succeeded", result.reason
        assert result.running == "1.1.0"  # reported by the new version, after its check
        assert box.current() == "b" and box.version() == "1.1.0"
        assert boot.read_state(box.root)["committed"] == "b"
        resumed = [h for h in server.target_hits() if h.status == 206]
        assert resumed and int(resumed[0].range[6:-1]) >= kept
        assert sum(h.sent for h in server.target_hits()) < 1.5 * size


BAD = {
    "crash": ("1.2.0", r"no health verdict after 2 start\(s\): the new version crashed or hung"),
    "unhealthy": ("1.3.0", r"self-test failed: camera: RuntimeError: no frame from the camera"),
    "silent": ("1.4.0", r"no health verdict within 10 s of starting"),
}


@pytest.mark.parametrize("variant", sorted(BAD))
async def test_a_bad_new_version_rolls_back_by_itself(
        variant: str, tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
        server: RepoServer, bundles: dict[str, Path]) -> None:
    version, reason = BAD[variant]
    repo.add_bundle(bundles[variant])
    async with controller_side(broker) as obs, \
            supervised(tmp_path, broker, repo, bundles, health_timeout=10.0) as box:
        target = f"tiepdan-{version}.tar"
        await notify(obs, DEVICE, job("j1", target, version, server.url))
        result = await wait_final(obs, DEVICE, "j1", 150, box)
        assert result.status == "rolled_back", (result, box.output()[-3000:])
        assert result.running == "1.0.0"
        assert result.reason is not None
        assert re.search(reason, result.reason), result.reason
        assert result.reason.startswith(f"{version}: ")
        state = boot.read_state(box.root)
        assert box.current() == "a" and state["committed"] == "a" and state["trial"] is None
        steps = [u.step for u in updates(obs, DEVICE, "j1")]
        assert "restarting" in steps


@pytest.mark.parametrize("step", ["unpacked", "recorded"])
async def test_kill_during_install_or_switch_then_the_job_completes(
        step: str, tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
        server: RepoServer, bundles: dict[str, Path]) -> None:
    """kill -9 of a box mid-install (or mid-switch), then it starts again with the job still
    notified: it cleans up, installs again and ends on the new version."""
    repo.add_bundle(bundles["good"])
    root = new_box_root(tmp_path, DEVICE, bundles["base"])
    from tests.ota.test_slots import killed_at

    if step == "unpacked":
        killed_at(step, f"slots.install(Path({str(root)!r}), Path({str(bundles['good'])!r}), "
                        "checkpoint=at)")
        assert (root / "slots" / ".b.new").exists()
    else:
        slots.install(root, bundles["good"])
        killed_at(step, f"boot.switch(Path({str(root)!r}), 'b', version='1.1.0', job='j1', "
                        "attempts=2, health_timeout=30, checkpoint=at)")
    config = write_box_config(tmp_path, box_settings(tmp_path, broker, DEVICE, root, repo))
    async with controller_side(broker) as obs:
        await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))
        box = SupervisedBox(root, config).start()
        try:
            result = await wait_final(obs, DEVICE, "j1", 120, box)
        finally:
            await asyncio.to_thread(box.stop)
        assert result.status == "succeeded", result.reason
        assert box.current() == "b" and box.version() == "1.1.0"
        assert not (root / "slots" / ".b.new").exists()


@pytest.mark.soak
async def test_kill_at_random_moments_of_whole_updates(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    """kill -9 at a random moment of an update (download, install, switch, trial), again and
    again: every round ends committed on one version, never on a broken or half slot."""
    import random

    repo.add_bundle(bundles["good"])
    server.rate = bundles["good"].stat().st_size / 3
    async with controller_side(broker) as obs:
        for round_ in range(12):
            work = tmp_path / f"round-{round_}"
            work.mkdir()
            root = new_box_root(work, DEVICE, bundles["base"])
            settings = box_settings(work, broker, DEVICE, root, repo)
            box = SupervisedBox(root, write_box_config(work, settings)).start()
            job_id = f"soak-{round_}"
            try:
                await notify(obs, DEVICE, job(job_id, "tiepdan-1.1.0.tar", "1.1.0", server.url))
                await asyncio.sleep(random.uniform(0.5, 8.0))
                box.kill9()
                assert box.current() in ("a", "b")
                assert box.version() in ("1.0.0", "1.1.0")
                box.start()
                result = await wait_final(obs, DEVICE, job_id, 120, box)
                seen = [(u.status, u.step, u.reason, u.running)
                        for u in updates(obs, DEVICE, job_id)]
                assert result.status == "succeeded", seen
                assert box.version() == "1.1.0", (seen, boot.read_state(root))
                assert boot.read_state(root)["committed"] == box.current()
            finally:
                await asyncio.to_thread(box.stop)
