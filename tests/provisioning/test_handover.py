"""Enrollment hands a box the rest of what it needs (issue 12): the archive's address, the OTA
repository's, and the repository's TUF root, which must match the hash pinned on the SD card at
provisioning. Real controller over HTTPS, the box's own `enroll()`."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tomli_w

from tests.provisioning.support import agent_config, provision
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.firstboot.enroll import EnrollError, enroll
from tiepdan.ota.repository import Keyring, UpdateRepository


@pytest.fixture
async def controller(secure_broker: SecureBroker, tmp_path: Path) -> AsyncIterator[Controller]:
    """A controller whose OTA repository was made with `tiepdan-ota keys init`."""
    config = secure_broker.controller_config(
        archive={"public_url": "https://central.example:8600"},
        ota={"public_url": "https://central.example:8600/ota"})
    UpdateRepository(config.ota_repository_path, Keyring()).initialise(
        tmp_path / "keys", [tmp_path / "offline-1", tmp_path / "offline-2"], root_keys=3,
        root_threshold=2)
    async with running_controller(config) as c:
        await eventually(lambda: c.provisioning.enrollment.port, what="enrollment site")
        yield c


def pinned(paths_boot: Path) -> str:
    provision_toml = tomllib.loads((paths_boot / "tiepdan" / "provision.toml").read_text())
    return str(provision_toml["ota"]["root_sha256"])


async def test_enrollment_hands_over_archive_ota_and_the_pinned_root(
        controller: Controller, tmp_path: Path) -> None:
    root = UpdateRepository(controller.config.ota_repository_path).trusted_root()
    paths = provision(controller, tmp_path, "xa-hung-nguyen")
    assert pinned(paths.boot) == hashlib.sha256(root).hexdigest()
    await enroll(paths)
    config = agent_config(paths)
    assert config.recording.archive_url == "https://central.example:8600"
    assert config.ota.repository == "https://central.example:8600/ota"
    assert Path(config.ota.trusted_root) == paths.ota_root
    assert paths.ota_root.read_bytes() == root
    assert config.board.profile == "sim"  # settings already there are kept


async def test_a_root_that_does_not_match_the_pin_is_refused(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-dien-chau")
    card = paths.boot / "tiepdan" / "provision.toml"
    settings = tomllib.loads(card.read_text())
    settings["ota"]["root_sha256"] = "0" * 64  # a card pinned to another repository's root
    card.write_text(tomli_w.dumps(settings))
    with pytest.raises(EnrollError, match="does not match the hash pinned on the SD card"):
        await enroll(paths)
    assert paths.token.exists(), "a refused answer must not spend the box's token"
    assert not paths.ota_root.exists()
    assert "ota" not in tomllib.loads(paths.agent_config.read_text())


async def test_without_a_repository_the_box_still_gets_the_archive(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    config = secure_broker.controller_config()
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port,
                         what="enrollment site")
        paths = provision(controller, tmp_path, "xa-quynh-luu")
        assert pinned(paths.boot) == ""
        await enroll(paths)
        box_url = controller.boxes.url
    settings = agent_config(paths)
    assert settings.recording.archive_url == box_url
    assert not paths.ota_root.exists()


async def test_remote_configuration_moves_the_archive_after_enrollment(
        controller: Controller, tmp_path: Path) -> None:
    paths = provision(controller, tmp_path, "xa-yen-thanh")
    await enroll(paths)
    async with running_agent(agent_config(paths)) as box:
        assert box.agent.uploader.archive_url == "https://central.example:8600"
        await eventually(lambda: (d := controller.registry.get("xa-yen-thanh")) and d.online,
                         what="the box online")
        await controller.set_desired("xa-yen-thanh", protocol.RemoteConfig(
            archive_url="https://archive.tinh.example:8600/"))
        await eventually(lambda: box.agent.uploader.archive_url ==
                         "https://archive.tinh.example:8600", what="the new archive address")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b'{"archive_url": "file:///etc/passwd"}', protocol.RemoteConfig)
