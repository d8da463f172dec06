"""The controller's SQLite database.

One file, WAL mode so the CLI can read while the controller writes. Its tables are created and
changed only by the versioned migrations in `controller/migrations/controller_db.py`, run each
time the file is opened. Databases are
created (and kept) mode 0600: they hold claim tokens' hashes, identities and the fleet's state;
SQLite gives its -wal and -shm files the database's mode.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tiepdan.controller.migrations import controller_db, migrate


def private_file(path: Path, mode: int = 0o600) -> Path:
    """Create `path` with `mode` if it is missing, and tighten it if an older run left it
    readable by others; before SQLite (or anyone) opens it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(private_file(path), isolation_level=None,
                                    check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.migrated_from = migrate(self.conn, controller_db.MIGRATIONS, label="controller",
                                     path=path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def open_readonly(path: Path) -> sqlite3.Connection:
    """For CLIs that read while the controller runs."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn
