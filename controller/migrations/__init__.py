"""Versioned schema migrations for the controller's SQLite files, run at every open.

Each file has one ordered list of migrations (`controller_db.MIGRATIONS`,
`archive_db.MIGRATIONS`); SQLite's `user_version` header field records how many have run. A
migration's SQL is frozen once released: a later change to a table is a new migration, never an
edit of an old one, so every installed controller walks the same path to the same schema.
Version 1 of each list is the schema as it stood before this mechanism (all `IF NOT EXISTS`), so
a database made by an older release upgrades in place.

Each step runs in its own transaction together with the `user_version` bump (SQLite keeps that
field in the first page, so a failed step rolls the number back too). Before the first pending
step of a database that already holds tables, a copy is written beside it
(`<file>.v<old>.bak`, mode 0600) with SQLite's online backup: an upgrade never loses data even if
a later release's migration is wrong.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tiepdan.errors import Conflict

log = logging.getLogger(__name__)

Step = str | Callable[[sqlite3.Connection], None]


class SchemaTooNew(Conflict):
    """The file was written by a newer release; running older code on it could corrupt it."""

    code = "schema_too_new"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    step: Step  # SQL statements, or a function for what SQL alone cannot say


def statements(sql: str) -> list[str]:
    """Split a script into statements (triggers keep their inner `;`), so they can run inside
    one transaction: `executescript` would commit first."""
    out: list[str] = []
    buf = ""
    for part in sql.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")
    return out


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()
    return row is not None


def _backup(conn: sqlite3.Connection, path: Path, current: int) -> Path:
    from tiepdan.controller.store import private_file

    target = path.with_name(f"{path.name}.v{current}.bak")
    copy = sqlite3.connect(private_file(target))
    try:
        conn.backup(copy)
    finally:
        copy.close()
    return target


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, label: str,
            path: Path | None = None) -> int:
    """Bring `conn` to the last version in `migrations`; returns the version it started at.

    `conn` must be in autocommit mode (`isolation_level=None`), as every store here is.
    """
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"{label} migrations must be numbered 1..{len(migrations)}")
    current = version(conn)
    target = len(migrations)
    if current > target:
        raise SchemaTooNew(
            f"{label} database is at schema version {current} but this release knows only "
            f"{target}: it was written by a newer release; run that release (or restore the "
            f"backup taken before the upgrade)", current=current, known=target)
    if current == target:
        return current
    if path is not None and _has_tables(conn):  # version 0 with tables: from before migrations
        backup = _backup(conn, path, current)
        log.info("db_backup_before_migration db=%s from=%d file=%s", label, current, backup)
    for migration in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        if version(conn) >= migration.version:  # another process (a CLI) got here first
            conn.execute("COMMIT")
            continue
        try:
            if isinstance(migration.step, str):
                for statement in statements(migration.step):
                    conn.execute(statement)
            else:
                migration.step(conn)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        except BaseException:
            conn.execute("ROLLBACK")
            log.error("db_migration_failed db=%s version=%d name=%s", label, migration.version,
                      migration.name)
            raise
        conn.execute("COMMIT")
        log.info("db_migrated db=%s version=%d name=%s", label, migration.version,
                 migration.name)
    return current
