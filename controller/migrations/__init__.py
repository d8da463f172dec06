"""Versioned schema migrations for the controller's databases (SQLite or PostgreSQL), run at
every open.

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

On PostgreSQL the same list runs, each step in its PostgreSQL text where the types or the syntax
differ (`Migration.postgresql`); the version lives in the table `schema_versions` (one row per
database label, so the controller's tables and the archive index may share one PostgreSQL
database), locked for the step's transaction. PostgreSQL's DDL is transactional too, so a failed
step leaves the schema at the last good version; no copy is taken there (that is `pg_dump`'s
job, on the database server's own schedule).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tiepdan.controller.connection import Connection, SqliteConnection
from tiepdan.errors import Conflict

log = logging.getLogger(__name__)

Step = str | Callable[[Connection], None]


class SchemaTooNew(Conflict):
    """The database was written by a newer release; running older code on it could corrupt it."""

    code = "schema_too_new"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    step: Step  # SQL statements, or a function for what SQL alone cannot say
    # The same step in PostgreSQL's words, where its types or syntax differ; None: `step` as is.
    postgresql: Step | None = None

    def for_dialect(self, dialect: str) -> Step:
        return self.postgresql if dialect == "postgresql" and self.postgresql is not None \
            else self.step


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


VERSIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_versions ("
                  "db TEXT PRIMARY KEY, version BIGINT NOT NULL)")


def _wrap(conn: Connection | sqlite3.Connection) -> Connection:
    return SqliteConnection(conn) if isinstance(conn, sqlite3.Connection) else conn


def version(conn: Connection | sqlite3.Connection, label: str = "controller") -> int:
    conn = _wrap(conn)
    if conn.dialect == "sqlite":
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    row = conn.execute("SELECT version FROM schema_versions WHERE db = ?", (label,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_version(conn: Connection, label: str, number: int) -> None:
    if conn.dialect == "sqlite":
        conn.execute(f"PRAGMA user_version = {int(number)}")
    else:
        conn.execute("INSERT INTO schema_versions (db, version) VALUES (?, ?) "
                     "ON CONFLICT (db) DO UPDATE SET version = excluded.version", (label, number))


def _has_tables(conn: Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()
    return row is not None


def _backup(conn: SqliteConnection, path: Path, current: int) -> Path:
    from tiepdan.controller.store import private_file

    target = path.with_name(f"{path.name}.v{current}.bak")
    copy = sqlite3.connect(private_file(target))
    try:
        conn.raw.backup(copy)
    finally:
        copy.close()
    return target


def _run(conn: Connection, step: Step) -> None:
    if callable(step):
        step(conn)
    elif conn.dialect == "sqlite":
        for statement in statements(step):
            conn.execute(statement)
    else:  # psycopg sends a script without parameters as one simple query
        conn.execute(step)


def migrate(conn: Connection | sqlite3.Connection, migrations: Sequence[Migration], *,
            label: str, path: Path | None = None) -> int:
    """Bring `conn` to the last version in `migrations`; returns the version it started at.

    A raw `sqlite3` connection must be in autocommit mode (`isolation_level=None`), as every
    store here is.
    """
    conn = _wrap(conn)
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"{label} migrations must be numbered 1..{len(migrations)}")
    if conn.dialect == "postgresql":
        conn.execute(VERSIONS_TABLE)
    current = version(conn, label)
    target = len(migrations)
    if current > target:
        raise SchemaTooNew(
            f"{label} database is at schema version {current} but this release knows only "
            f"{target}: it was written by a newer release; run that release (or restore the "
            f"backup taken before the upgrade)", current=current, known=target)
    if current == target:
        return current
    if (path is not None and isinstance(conn, SqliteConnection)
            and _has_tables(conn)):  # version 0 with tables: from before migrations
        backup = _backup(conn, path, current)
        log.info("db_backup_before_migration db=%s from=%d file=%s", label, current, backup)
    for migration in migrations[current:]:
        try:
            with conn.transaction():
                if conn.dialect == "postgresql":  # one migrating process at a time
                    conn.execute("LOCK TABLE schema_versions IN EXCLUSIVE MODE")
                if version(conn, label) >= migration.version:  # another process got here first
                    continue
                _run(conn, migration.for_dialect(conn.dialect))
                _set_version(conn, label, migration.version)
        except BaseException:
            log.error("db_migration_failed db=%s version=%d name=%s dialect=%s", label,
                      migration.version, migration.name, conn.dialect)
            raise
        log.info("db_migrated db=%s version=%d name=%s dialect=%s", label, migration.version,
                 migration.name, conn.dialect)
    return current
