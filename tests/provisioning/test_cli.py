"""The technician's day, as separate programs: `tiepdan-provision` and the box's `tiepdan-enroll`
against a running controller and the TLS broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import msgspec
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.provisioning.support import FAST_AGENT
from tests.support import SecureBroker, eventually, running_agent, running_controller
from tiepdan.controller.config import ControllerConfig
from tiepdan.firmware.agent.config import load_config
from tiepdan.tools.broker import Mosquitto, free_port

BIN = Path(sys.executable).parent


async def run(*argv: str | Path, timeout: float = 60) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"})
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode()


def write_config(path: Path, config: ControllerConfig) -> Path:
    path.write_text(tomli_w.dumps(msgspec.to_builtins(config)))
    return path


async def test_ca_init_writes_a_broker_configuration_mosquitto_accepts(tmp_path: Path) -> None:
    port = free_port()
    config = msgspec.convert({
        "controller": {"data_dir": str(tmp_path / "ctl")},
        "mqtt": {"host": "127.0.0.1", "port": port},
    }, ControllerConfig)
    path = write_config(tmp_path / "controller.toml", config)
    root_key, secret = tmp_path / "usb" / "root.key", tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    offline = ["--root-key", root_key, "--passphrase-file", secret]
    status, out = await run(BIN / "tiepdan-provision", "--config", path, "ca", "init",
                            "--listen-host", "127.0.0.1", *offline)
    assert status == 0, out
    assert "provisioning CA created" in out
    assert ((tmp_path / "ctl" / "provisioning" / "ca.key").stat().st_mode & 0o777) == 0o600
    # The root's key went to the "offline media", encrypted; only the issuing CA is online.
    assert b"ENCRYPTED PRIVATE KEY" in root_key.read_bytes()
    assert (root_key.stat().st_mode & 0o777) == 0o600
    root = x509.load_pem_x509_certificate((tmp_path / "ctl/provisioning/root.pem").read_bytes())
    bundle = x509.load_pem_x509_certificates(
        (tmp_path / "ctl/provisioning/ca.pem").read_bytes())
    assert [c.subject for c in bundle] == [bundle[0].subject, root.subject]
    bundle[0].verify_directly_issued_by(root)
    root_spki = root.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for key in (tmp_path / "ctl").rglob("*.key"):
        loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert loaded.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo) != root_spki, key
    for name in ("ca.pem", "controller.pem", "controller.key"):
        assert (tmp_path / "ctl" / "tls" / name).exists()
    conf = (tmp_path / "ctl" / "broker" / "tiepdan.conf").read_text()
    assert f"listener {port} 127.0.0.1" in conf and "require_certificate true" in conf
    with Mosquitto(tmp_path / "mosquitto", port=port, listeners=conf) as broker:
        assert broker.process is not None and broker.process.poll() is None

    status, out = await run(BIN / "tiepdan-provision", "--config", path, "ca", "init",
                            *offline)
    assert status == 1 and "already exists" in out

    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    status, out = await run(BIN / "tiepdan-provision", "--config", path, "ca", "rotate",
                            "--root-key", root_key, "--passphrase-file", wrong)
    assert status == 1 and "error" in out
    status, out = await run(BIN / "tiepdan-provision", "--config", path, "ca", "rotate",
                            *offline)
    assert status == 0, out
    rotated = x509.load_pem_x509_certificates(
        (tmp_path / "ctl/provisioning/ca.pem").read_bytes())
    assert rotated[0] != bundle[0] and rotated[1] == root
    assert list((tmp_path / "ctl/provisioning/previous").glob("*.key"))

    # An upgrade rewrites only the broker configuration, the same one `ca init` wrote.
    (tmp_path / "ctl" / "broker" / "tiepdan.conf").write_text("# an older version's\n")
    status, out = await run(BIN / "tiepdan-provision", "--config", path, "broker-config",
                            "--listen-host", "127.0.0.1")
    assert status == 0, out
    assert (tmp_path / "ctl" / "broker" / "tiepdan.conf").read_text() == conf
    assert "plugin_opt_config_file" in conf and "max_packet_size" in conf


async def test_a_technician_provisions_verifies_and_revokes_a_box(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    config = secure_broker.controller_config()
    path = write_config(tmp_path / "controller.toml", config)
    provision = [BIN / "tiepdan-provision", "--config", path]
    sdcard, labels = tmp_path / "bootfs", tmp_path / "labels"
    sdcard.mkdir()
    async with running_controller(config) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port)
        status, out = await run(*provision, "new-box", "--commune", "hung-nguyen", "--hall",
                                "UBND xã Hưng Nguyên", "--province", "nghe-an", "--device",
                                "xa-hung-nguyen", "--boot", sdcard, "--labels", labels)
        assert status == 0, out
        assert (sdcard / "tiepdan" / "claim.token").exists()
        assert (labels / "xa-hung-nguyen.png").exists() and (labels / "xa-hung-nguyen.svg").exists()

        agent_toml = tmp_path / "agent.toml"
        agent_toml.write_text(tomli_w.dumps(FAST_AGENT))
        status, out = await run(BIN / "tiepdan-enroll", "--boot", sdcard, "--state-dir",
                                tmp_path / "box", "--config", agent_toml)
        assert status == 0, out
        assert "enroll_done device=xa-hung-nguyen" in out
        assert not (sdcard / "tiepdan" / "claim.token").exists()

        status, out = await run(*provision, "verify", "xa-never-seen", "--wait", "1")
        assert status == 1 and "did not come online" in out

        async with running_agent(load_config(agent_toml)):
            status, out = await run(*provision, "verify", "xa-hung-nguyen", "--wait", "30")
            assert status == 0, out
            assert "OK" in out and "UBND xã Hưng Nguyên" in out

            status, out = await run(*provision, "list", "--json")
            boxes = json.loads(out)
            assert [(b["device"], b["state"], b["online"]) for b in boxes] == \
                [("xa-hung-nguyen", "enrolled", True)]

            status, out = await run(*provision, "revoke", "xa-hung-nguyen", "--reason",
                                    "stolen")
            assert status == 0, out
            assert "broker refuses it: yes" in out and "live connection cut: yes" in out

        status, out = await run(*provision, "list")
        assert status == 0 and "revoked" in out

        status, out = await run(*provision, "new-box", "--commune", "x", "--hall", "h",
                                "--device", "controller-central", "--boot", sdcard)
        assert status == 1 and "controller-" in out
