"""Backup and restore end to end: a controller with a CA, an enrolled box and a session is
backed up while running, its data folder wiped and restored from the encrypted, signed file;
the restored controller takes the box's recording over mutual TLS with the box's old
certificate and pinned controller key, without re-provisioning, and closes the session.
Forged, altered or misdirected restores write nothing."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

import msgspec
import pyrage
import pytest
import tomli_w

from tests.recording.arc_support import ended_session, enroll, manifest_records, write_recording
from tests.support import (
    database_settings,
    eventually,
    init_ca,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.controller.cli.main import main
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.migrations.transfer import is_empty, tables
from tiepdan.controller.store import open_readonly
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.postgres import Postgres

BOX = "xa-backup"


def cli(config_file: Path, *args: str) -> int:
    return main(["--config", str(config_file), *args])


def holds_data(config: ControllerConfig) -> bool:
    """Whether the controller's database exists with something in it (either backend)."""
    if not config.database.url:
        return (config.data_dir / "controller.db").exists()
    with open_readonly(config.database.url) as conn:
        return bool(tables(conn)) and not is_empty(conn)


def wipe(config: ControllerConfig, request: pytest.FixtureRequest) -> None:
    """The server is lost: its data folder, and its PostgreSQL database if it had one."""
    shutil.rmtree(config.data_dir)
    if config.database.url:
        server: Postgres = request.getfixturevalue("postgres_server")
        name = config.database.url.rsplit("/", 1)[1].split("?")[0]
        server.drop_database(name)
        server.create_database(name)


async def test_backup_wipe_restore_and_the_box_carries_on(
        tmp_path: Path, broker: Mosquitto, database: Path | str,
        request: pytest.FixtureRequest) -> None:
    """On SQLite, and on PostgreSQL, whose rows travel in the backup as a SQLite file."""
    config = make_controller_config(tmp_path, broker, archive={"close_interval": 0.2,
                                                                 "record_bridge": False},
                                    boxes={"host": "127.0.0.1", "port": free_port()},
                                    database=database_settings(database))
    init_ca(config)
    config_file = tmp_path / "controller.toml"
    config_file.write_text(tomli_w.dumps(msgspec.to_builtins(config)))
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "offline.key").write_text(str(identity) + "\n")
    out = tmp_path / "backups" / "central.tdb"
    box_dir = tmp_path / BOX

    async with running_controller(config) as c:
        session = await ended_session(c, BOX, "xa-other", joined=(BOX,))
        key = enroll(c, box_dir, BOX)
        signer = base64.b64encode(c.signing.public_raw()).decode()
        recipients = list(c.archive.recipients)
        assert await asyncio.to_thread(cli, config_file, "backup", "--out", str(out),
                                       "--recipient", str(identity.to_public())) == 0
    assert out.stat().st_mode & 0o077 == 0
    assert b"BEGIN PRIVATE KEY" not in out.read_bytes()  # encrypted, keys included

    wipe(config, request)
    assert not holds_data(config)
    stranger = base64.b64encode(bytes(32)).decode()
    other = pyrage.x25519.Identity.generate()
    (tmp_path / "other.key").write_text(str(other) + "\n")
    tampered = tmp_path / "tampered.tdb"
    data = bytearray(out.read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    for file, key_file, who in ((out, "offline.key", stranger), (tampered, "offline.key", signer),
                                (out, "other.key", signer)):
        assert cli(config_file, "restore", str(file), "--identity", str(tmp_path / key_file),
                   "--signer", who) == 1
        assert not holds_data(config)
    assert cli(config_file, "restore", str(out), "--identity", str(tmp_path / "offline.key"),
               "--signer", signer) == 0
    assert (config.data_dir / "signing.key").stat().st_mode & 0o077 == 0
    assert holds_data(config)
    assert (config.data_dir / "controller.db").exists() == (not config.database.url)
    # A second restore onto a controller that has a database again needs --replace.
    assert cli(config_file, "restore", str(out), "--identity", str(tmp_path / "offline.key"),
               "--signer", signer) == 1

    restored = msgspec.convert(msgspec.to_builtins(config), ControllerConfig)
    async with running_controller(restored) as c:
        assert c.db.dialect == ("postgresql" if config.database.url else "sqlite")
        assert base64.b64encode(c.signing.public_raw()).decode() == signer
        assert list(c.archive.recipients) == recipients
        assert c.sessions.get(session) is not None
        assert c.identities.get(BOX) is not None
        directory = box_dir / "recordings" / session
        write_recording(directory, device=BOX, session=session, key=key,
                        recipients=c.archive.recipients, segments=2)
        agent = make_agent_config(tmp_path, broker, BOX, recording={
            "enabled": False, "archive_url": c.boxes.url, "delete_grace": 0.0,
            "upload_retry_max": 0.5, "upload_timeout": 5.0})
        async with running_agent(agent):
            await eventually(lambda: len(c.archive.receipts(session, BOX)) == 2, timeout=30,
                             what="the box's segments archived by the restored controller")
            await eventually(lambda: getattr(c.registry.get(BOX), "online", False),
                             timeout=30, what="the box back online")
            await eventually(lambda: getattr(c.sessions.get(session), "state", "") == "closed",
                             timeout=30, what="the session closed by the restored controller")
        kinds = [r.kind for r in manifest_records(directory / "manifest.jsonl")]
        assert kinds.count("uploaded") == 2  # receipts checked with the pinned key

