"""File modes (issue 15): no database, key or token the controller writes is readable by others.

Read from a real controller's data directory after it ran with provisioning and the archive,
and again after an older install's world-readable databases were tightened on start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.recording.arc_support import archive_controller, ended_session
from tiepdan.tools.broker import Mosquitto

SECRET_SUFFIXES = (".db", ".db-wal", ".db-shm", ".key", ".token")


def _secrets(data_dir: Path) -> dict[str, int]:
    found = {}
    for path in data_dir.rglob("*"):
        if path.is_file() and (path.name.endswith(SECRET_SUFFIXES)
                               or path.name == "identity.txt"):
            found[str(path.relative_to(data_dir))] = stat.S_IMODE(path.stat().st_mode)
    return found


async def test_databases_keys_and_tokens_are_private(tmp_path: Path, broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker) as c:
        await ended_session(c, "box-a", "box-b")
        data_dir = c.config.data_dir
    modes = _secrets(data_dir)
    for name in ("controller.db", "archive/archive.db", "admin.token", "signing.key",
                 "provisioning/ca.key", "provisioning/enroll.key"):
        assert name in modes, f"{name} not written: {sorted(modes)}"
    loose = {name: oct(mode) for name, mode in modes.items() if mode not in (0o600, 0o640)}
    assert not loose, f"readable by others: {loose}"


async def test_an_older_world_readable_database_is_tightened(tmp_path: Path,
                                                            broker: Mosquitto) -> None:
    async with archive_controller(tmp_path, broker) as c:
        data_dir = c.config.data_dir
    for name in ("controller.db", "archive/archive.db"):
        os.chmod(data_dir / name, 0o644)
    async with archive_controller(tmp_path, broker):
        pass
    for name in ("controller.db", "archive/archive.db"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
