"""The controller's database: one SQLite file by default, or PostgreSQL (`database.url`).

SQLite runs in WAL mode so the CLI can read while the controller writes. Either way the tables
are created and changed only by the versioned migrations in
`controller/migrations/controller_db.py`, run each time the database is opened. SQLite files
are created (and kept) mode 0600: they hold claim tokens' hashes, identities and the fleet's
state; SQLite gives its -wal and -shm files the database's mode.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tiepdan.controller.connection import Connection, Dialect, connect, is_postgresql
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
    """`target`: the SQLite file's path, or a `postgresql://` URL."""

    def __init__(self, target: Path | str) -> None:
        self.path: Path | None = None
        if is_postgresql(target):
            self.conn: Connection = connect(target)
        else:
            self.path = Path(target)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = connect(private_file(self.path))
        self.migrated_from = migrate(self.conn, controller_db.MIGRATIONS, label="controller",
                                     path=self.path)

    @property
    def dialect(self) -> Dialect:
        return self.conn.dialect

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        return self.conn.transaction()

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def open_readonly(target: Path | str) -> Iterator[Connection]:
    """For CLIs that read while the controller runs."""
    conn = connect(target, readonly=True)
    try:
        yield conn
    finally:
        conn.close()
