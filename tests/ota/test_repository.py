"""Bundles and the TUF repository: build, publish, fetch with ngclient, rotate keys."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from tuf.api import exceptions
from tuf.ngclient import Updater

from tests.ota.harness import RepoServer, version_of
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.ota import keys as keyfiles
from tiepdan.ota.bundle import BundleError, read_bundle
from tiepdan.ota.repository import Keyring, RepositoryError, UpdateRepository
from tiepdan.tools.broker import Mosquitto


def client(tmp: Path, repo: UpdateRepository, server: RepoServer, name: str = "box") -> Updater:
    (tmp / name / "metadata").mkdir(parents=True, exist_ok=True)
    return Updater(str(tmp / name / "metadata"), f"{server.url}/metadata/",
                   str(tmp / name / "targets"), f"{server.url}/targets/",
                   bootstrap=repo.trusted_root())


def test_bundle_holds_the_wheel_at_its_version(bundles: dict[str, Path]) -> None:
    manifest, wheel = read_bundle(bundles["good"])
    assert manifest.version == version_of("good") == "1.1.0"
    assert manifest.wheel == "tiepdan-1.1.0-py3-none-any.whl"
    assert wheel[:2] == b"PK"


def test_a_bundle_with_a_swapped_wheel_is_refused(bundles: dict[str, Path],
                                                  tmp_path: Path) -> None:
    with tarfile.open(bundles["good"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    _, other = read_bundle(bundles["base"])
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as tar:
        for name, data in members.items():
            payload = other if name.endswith(".whl") else data
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(BundleError, match="does not match the manifest"):
        read_bundle(forged)


def test_published_bundle_downloads_and_verifies(tmp_path: Path, repo: UpdateRepository,
                                                 server: RepoServer,
                                                 bundles: dict[str, Path]) -> None:
    repo.add_bundle(bundles["good"])
    updater = client(tmp_path, repo, server)
    info = updater.get_targetinfo("tiepdan-1.1.0.tar")
    assert info is not None and info.custom == {"version": "1.1.0", "downgrade": False}
    path = updater.download_target(info)
    assert Path(path).read_bytes() == bundles["good"].read_bytes()


def test_root_threshold_is_enforced_when_signing(tmp_path: Path, repo: UpdateRepository) -> None:
    # Root is 2 of 3 keys kept on two offline media; one medium alone cannot rotate it.
    lone = UpdateRepository(repo.path, Keyring.from_dirs(tmp_path / "keys",
                                                         [tmp_path / "offline-2"]))
    with pytest.raises(RepositoryError, match="threshold"):
        lone.rotate("targets", tmp_path / "keys", [tmp_path / "offline-2"])
    assert repo.root().version == 1


def test_targets_and_root_rotation_reach_a_box(tmp_path: Path, repo: UpdateRepository,
                                               server: RepoServer,
                                               bundles: dict[str, Path]) -> None:
    keys, offline = tmp_path / "keys", [tmp_path / "offline-1", tmp_path / "offline-2"]
    repo.add_bundle(bundles["base"])
    box = client(tmp_path, repo, server)
    assert box.get_targetinfo("tiepdan-1.0.0.tar") is not None

    admin = UpdateRepository(repo.path, Keyring.from_dirs(keys, offline))
    old_targets = set(admin.root().roles["targets"].keyids)
    admin.rotate("targets", keys, offline)
    admin.rotate("root", keys, offline, count=3, threshold=2)
    new_root = admin.root()
    assert new_root.version == 3
    assert not old_targets & set(new_root.roles["targets"].keyids)
    assert len(list((keys / "targets" / "retired").glob("*.pem"))) == 1
    # Publishing now needs the new keys only; the old ones are retired.
    fresh = UpdateRepository(repo.path, Keyring.from_dirs(keys, offline))
    fresh.add_bundle(bundles["good"])

    # The box was provisioned with root v1 and walks 1 -> 2 -> 3 by itself.
    box = client(tmp_path, repo, server)
    box.refresh()
    assert box.get_targetinfo("tiepdan-1.1.0.tar") is not None
    history = sorted(p.name for p in (tmp_path / "box/metadata/root_history").iterdir())
    assert history == ["1.root.json", "2.root.json", "3.root.json"]


def test_an_old_targets_key_cannot_sign_after_rotation(tmp_path: Path, repo: UpdateRepository,
                                                      server: RepoServer,
                                                      bundles: dict[str, Path]) -> None:
    keys, offline = tmp_path / "keys", [tmp_path / "offline-1", tmp_path / "offline-2"]
    stolen = keyfiles.load(keys / "targets", "targets")
    UpdateRepository(repo.path, Keyring.from_dirs(keys, offline)).rotate("targets", keys, offline)
    thief = UpdateRepository(repo.path, Keyring.from_dirs(keys))
    thief.keyring.signers["targets"] = list(stolen)
    with pytest.raises(RepositoryError, match="threshold"):
        thief.add_bundle(bundles["good"])
    box = client(tmp_path, repo, server)
    with pytest.raises(exceptions.RepositoryError):
        # Even written straight to disk, a box refuses it.
        forged = thief.open("targets")
        forged.signed.version += 1
        forged.signatures.clear()
        forged.sign(stolen[0])
        (repo.metadata_dir / f"{forged.signed.version}.targets.json").write_bytes(
            forged.to_bytes())
        thief.keyring.signers["targets"] = []
        snap = thief.open("snapshot")
        snap.signed.meta["targets.json"].version = forged.signed.version
        snap.signed.version += 1
        snap.signatures.clear()
        for signer in Keyring.from_dirs(keys).of("snapshot"):
            snap.sign(signer)
        (repo.metadata_dir / f"{snap.signed.version}.snapshot.json").write_bytes(snap.to_bytes())
        UpdateRepository(repo.path, Keyring.from_dirs(keys)).do_timestamp()
        box.refresh()


def test_snapshot_and_timestamp_are_re_signed_before_they_expire(
        repo: UpdateRepository) -> None:
    from datetime import UTC, datetime, timedelta

    assert repo.refresh() == []  # fresh: nothing to do
    repo.expires_override["timestamp"] = datetime.now(UTC) + timedelta(hours=1)
    repo.do_timestamp(force=True)
    version = repo.timestamp().version
    assert repo.refresh() == ["timestamp"]
    assert repo.timestamp().version == version + 1
    assert repo.timestamp().expires > datetime.now(UTC) + timedelta(hours=23)
    repo.expires_override["snapshot"] = datetime.now(UTC) + timedelta(days=1)
    repo.do_snapshot(force=True)
    repo.do_timestamp()
    assert repo.refresh() == ["snapshot", "timestamp"]


async def test_the_controller_keeps_the_timestamp_fresh_with_online_keys_only(
        tmp_path: Path, repo: UpdateRepository, broker: Mosquitto) -> None:
    from datetime import UTC, datetime, timedelta

    # The controller's keys folder holds the online keys only (root and targets are elsewhere).
    online = tmp_path / "controller-keys"
    shutil.copytree(tmp_path / "keys" / "online", online / "online")
    repo.expires_override["timestamp"] = datetime.now(UTC) + timedelta(minutes=30)
    repo.do_timestamp(force=True)
    version = repo.timestamp().version
    config = make_controller_config(tmp_path, broker, ota={
        "repository": str(repo.path), "keys": str(online), "refresh_interval": 0.5})
    async with running_controller(config):
        await eventually(lambda: repo.timestamp().version > version, 20,
                         what="the timestamp re-signed")
    assert repo.timestamp().expires > datetime.now(UTC) + timedelta(hours=23)
