"""A box against a hostile or broken repository, and the update policy.

Each test: a real Mosquitto, a real TUF repository served over HTTP on loopback, a box agent
(in this process, with a real A/B root on disk) given a job over MQTT. The attack or fault is
made on the served files; the box must end on a good version and report what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gpiozero.pins.mock import MockFactory
from securesystemslib.signer import CryptoSigner

from tests.ota.harness import (
    RepoServer,
    box_settings,
    job,
    new_box_root,
    notify,
    updates,
    wait_final,
    watch_updates,
)
from tests.support import Observer, eventually
from tiepdan.board.panel import Panel
from tiepdan.board.profile import load_profile
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.update import boot
from tiepdan.firmware.update.remote import RemoteUpdater
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.simbox import SimBox

DEVICE = "xa-test"


@contextlib.asynccontextmanager
async def box(tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
              bundles: dict[str, Path], **ota: Any) -> AsyncIterator[SimBox]:
    root = new_box_root(tmp_path, DEVICE, bundles["base"])
    config = msgspec.convert(box_settings(tmp_path, broker, DEVICE, root, repo, **ota),
                             AgentConfig)
    profile = load_profile("sim")
    simbox = SimBox(config, profile, lambda: Panel(profile, pin_factory=MockFactory()))
    task = asyncio.create_task(simbox.run())
    try:
        await simbox.wait_started()
        yield simbox
    finally:
        simbox.stop()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def observer(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with Observer(broker, "test-controller") as obs:
        await watch_updates(obs)
        yield obs


async def run_job(obs: Observer, server: RepoServer, job_id: str, target: str,
                  version: str, timeout: float = 60.0) -> protocol.JobUpdate:
    await notify(obs, DEVICE, job(job_id, target, version, server.url))
    return await wait_final(obs, DEVICE, job_id, timeout)


def attacker_signs_timestamp(repo: UpdateRepository) -> None:
    md = repo.open("timestamp")
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())
    (repo.metadata_dir / "timestamp.json").write_bytes(md.to_bytes())


def tamper(repo: UpdateRepository) -> None:
    target = next(repo.targets_dir.glob("*.tiepdan-1.1.0.tar"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def expire(role: str) -> Callable[[UpdateRepository], None]:
    def act(repo: UpdateRepository) -> None:
        repo.expires_override[role] = datetime.now(UTC) - timedelta(minutes=5)
        if role == "snapshot":
            repo.do_snapshot(force=True)
        repo.do_timestamp(force=True)
    return act


def mix_and_match(repo: UpdateRepository) -> None:
    # The snapshot lists targets v2; serve v1's content under v2's name.
    (repo.metadata_dir / "2.targets.json").write_bytes(
        (repo.metadata_dir / "1.targets.json").read_bytes())


FAULTS: dict[str, tuple[Callable[[UpdateRepository], None], str, str]] = {
    "tampered bundle": (tamper, "failed", r"LengthOrHashMismatchError"),
    "wrong signing key": (attacker_signs_timestamp, "failed", r"UnsignedMetadataError"),
    "expired timestamp": (expire("timestamp"), "failed", r"timestamp.json is expired"),
    "expired snapshot": (expire("snapshot"), "failed", r"snapshot.json is expired"),
    "mix and match": (mix_and_match, "failed", r"BadVersionNumberError"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_attacks_on_the_repository_are_refused(
        fault: str, tmp_path: Path, broker: Mosquitto, repo: UpdateRepository,
        server: RepoServer, bundles: dict[str, Path]) -> None:
    attack, status, reason = FAULTS[fault]
    repo.add_bundle(bundles["good"])
    attack(repo)
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        result = await run_job(obs, server, "j1", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == status
        assert result.reason is not None
        assert re.search(reason, result.reason), result.reason
        assert "after 2 attempts" in result.reason  # bounded, then given up
        assert result.running == "1.0.0"
        assert simbox.slot == "a" and simbox.version == "1.0.0"
        assert simbox.starts == 1  # never restarted into anything


async def test_bundle_larger_than_declared_is_cut_off(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    size = bundles["good"].stat().st_size
    server.extra = b"\0" * 500_000
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        result = await run_job(obs, server, "j1", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == "failed"
        assert "DownloadLengthMismatchError" in (result.reason or "")
        assert simbox.slot == "a"
        # Each try stopped reading within a chunk of the signed length; nothing was kept.
        received = re.search(r"Downloaded (\d+) bytes", result.reason or "")
        assert received is not None and size < int(received[1]) <= size + 2 * 64 * 1024
        assert not list((tmp_path / DEVICE / "ota" / "partial").glob("*.part"))


async def test_a_missing_bundle_fails_after_bounded_tries(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    for target in repo.targets_dir.glob("*.tiepdan-1.1.0.tar"):
        target.unlink()
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        result = await run_job(obs, server, "j1", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == "failed"
        assert result.reason == "download failed: HTTP 404 (after 2 attempts)"
        await asyncio.sleep(1.0)  # no retry loop after giving up
        assert [h.status for h in server.target_hits()] == [404, 404]
        # The same job notified again is answered from memory, not retried.
        await notify(obs, DEVICE, None)
        await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))
        await eventually(lambda: len([u for u in updates(obs, DEVICE, "j1")
                                      if u.status == "failed"]) >= 2, 10, what="re-report")
        assert len(server.target_hits()) == 2
        assert simbox.slot == "a"


async def test_replayed_older_metadata_is_refused(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["base"])
    captured = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.add_bundle(bundles["good"])
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        first = await run_job(obs, server, "j1", "tiepdan-1.0.0.tar", "1.0.0")
        assert (first.status, first.reason) == ("succeeded", "already running 1.0.0")
        (repo.metadata_dir / "timestamp.json").write_bytes(captured)  # the replay
        result = await run_job(obs, server, "j2", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == "failed"
        assert "BadVersionNumberError" in (result.reason or ""), result.reason
        assert simbox.slot == "a"


async def test_frozen_metadata_is_refused_once_it_expires(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["base"])
    repo.expires_override["timestamp"] = datetime.now(UTC) + timedelta(seconds=3)
    repo.do_timestamp(force=True)
    frozen = (repo.metadata_dir / "timestamp.json").read_bytes()
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        first = await run_job(obs, server, "j1", "tiepdan-1.0.0.tar", "1.0.0")
        assert first.status == "succeeded"
        repo.add_bundle(bundles["good"])
        (repo.metadata_dir / "timestamp.json").write_bytes(frozen)  # the mirror stops moving
        await asyncio.sleep(4)  # past the frozen timestamp's expiry
        result = await run_job(obs, server, "j2", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == "failed"
        assert "timestamp.json is expired" in (result.reason or ""), result.reason
        assert simbox.slot == "a"


async def test_unsigned_downgrade_is_rejected_and_signed_one_installs(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["old"])
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles) as simbox:
        refused = await run_job(obs, server, "j1", "tiepdan-0.9.0.tar", "0.9.0")
        assert refused.status == "rejected"
        assert refused.reason == "0.9.0 is older than the running 1.0.0 and no downgrade " \
                                 "was signed"
        repo.add_bundle(bundles["old"], downgrade=True)
        allowed = await run_job(obs, server, "j2", "tiepdan-0.9.0.tar", "0.9.0")
        assert allowed.status == "succeeded", allowed.reason
        assert simbox.slot == "b" and simbox.version == "0.9.0"
        # The permission was for that campaign: the next publish withdraws it.
        repo.add_bundle(bundles["good"])
        assert {t["path"]: t["downgrade"] for t in repo.targets_list()}[
            "tiepdan-0.9.0.tar"] is False


async def test_update_waits_for_clock_window_and_session(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    clock = tmp_path / "unsynced"
    async with observer(broker) as obs, box(tmp_path, broker, repo, bundles,
                                            clock_root=str(clock)) as simbox:
        agent = simbox.agent
        assert agent is not None
        agent.hold("session")
        now = datetime.now()
        closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
        agent.shadow.config = protocol.RemoteConfig(maintenance_window=closed)
        await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))

        def seen(reason: str) -> bool:
            return any(u.reason == f"waiting: {reason}" for u in updates(obs, DEVICE, "j1"))

        await eventually(lambda: seen("clock synchronisation"), 15, what="clock wait")
        await asyncio.sleep(1)
        assert not server.target_hits()  # nothing fetched on an unsynchronised clock
        (clock / "run/systemd/timesync").mkdir(parents=True)
        (clock / "run/systemd/timesync/synchronized").touch()
        await eventually(lambda: seen("maintenance window and no live session"), 15,
                         what="downloaded ahead, waiting to install")
        assert any(u.step == "downloaded" for u in updates(obs, DEVICE, "j1"))
        agent.shadow.config = protocol.RemoteConfig()  # the window opens ...
        await asyncio.sleep(2)
        assert simbox.slot == "a"  # ... but the session still holds it off
        agent.release("session")
        result = await wait_final(obs, DEVICE, "j1", 60)
        assert result.status == "succeeded", result.reason
        assert simbox.slot == "b" and boot.read_state(simbox.root)["committed"] == "b"
        steps = [u.step for u in updates(obs, DEVICE, "j1") if u.status == "in_progress"]
        for step in ("downloading", "downloaded", "installing", "restarting", "health_check"):
            assert step in steps
        progress = [u.progress for u in updates(obs, DEVICE, "j1") if u.step == "downloading"]
        assert progress == sorted(progress) and len(progress) <= 21  # throttled


async def test_a_box_from_before_the_updater_updates_its_slots_itself(
        tmp_path: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    """Configured for `tiepdan-updater` (the default) but none listens, and the agent may write
    its slots (a box whose package predates the updater): it keeps updating them itself rather
    than failing every job; where it may not write them it never falls back (test_updater)."""
    repo.add_bundle(bundles["good"])
    missing = tmp_path / "no-updater.sock"
    async with observer(broker) as obs, \
            box(tmp_path, broker, repo, bundles, updater_socket=str(missing)) as simbox:
        assert simbox.agent is not None
        assert not isinstance(simbox.agent.ota.updater, RemoteUpdater)
        result = await run_job(obs, server, "j1", "tiepdan-1.1.0.tar", "1.1.0")
        assert result.status == "succeeded", result.reason
        assert simbox.slot == "b" and simbox.version == "1.1.0"
