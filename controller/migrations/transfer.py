"""Every row of one of the controller's databases (its own, or the archive index) copied into
another one, SQLite or PostgreSQL, both at the same schema version: to move a controller onto
PostgreSQL (`tiepdan-controller copy-database`), and to carry a PostgreSQL database in a
backup as a SQLite file and back.

The copy is one transaction on the target (all or nothing) and one consistent read of the
source (a read transaction; REPEATABLE READ on PostgreSQL), so a running controller may be the
source. Tables go parents first (a table after those its foreign keys refer to);
identity columns keep their numbers (PostgreSQL's sequences are moved past them), and the two
tables read in insertion order keep it (SQLite's implicit `rowid`, PostgreSQL's explicit one).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tiepdan.controller.connection import Connection, connect, is_postgresql
from tiepdan.controller.migrations import Migration, archive_db, controller_db, migrate, version
from tiepdan.errors import Conflict

log = logging.getLogger(__name__)

BATCH = 2000

# label -> its migrations and, on PostgreSQL, its schema (the archive index has its own).
DATABASES: dict[str, tuple[list[Migration], str]] = {
    "controller": (controller_db.MIGRATIONS, ""),
    "archive": (archive_db.MIGRATIONS, archive_db.ARCHIVE_SCHEMA),
}


def open_database(target: Path | str, label: str, *, readonly: bool = False) -> Connection:
    """The `label` database at `target` (a SQLite file or a PostgreSQL URL), brought to this
    release's schema unless read-only."""
    from tiepdan.controller.store import private_file

    migrations, schema = DATABASES[label]
    if not is_postgresql(target) and not readonly:
        private_file(Path(target))  # it holds identities and token hashes: 0600 from the start
    conn = connect(target, readonly=readonly, schema=schema if is_postgresql(target) else "")
    if not readonly:
        migrate(conn, migrations, label=label,
                path=None if is_postgresql(target) else Path(target))
    return conn


def tables(conn: Connection) -> list[str]:
    """The database's tables in the order they were created (migrations' bookkeeping aside)."""
    if conn.dialect == "sqlite":
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
    else:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
            "AND c.relname != 'schema_versions' ORDER BY c.oid")
    return [str(row[0]) for row in rows]


def _parents(conn: Connection, table: str) -> set[str]:
    """The tables `table`'s foreign keys refer to."""
    if conn.dialect == "sqlite":
        return {str(row[2]) for row in conn.execute(f'PRAGMA foreign_key_list("{table}")')}
    return {str(row[0]) for row in conn.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = ?::regclass", (f'"{table}"',))}


def parents_first(conn: Connection, names: list[str]) -> list[str]:
    """`names` ordered so that no table comes before one it refers to."""
    waiting = {name: _parents(conn, name) - {name} for name in names}
    ordered: list[str] = []
    while waiting:
        ready = [name for name, parents in waiting.items() if not parents - set(ordered)]
        if not ready:
            raise Conflict(f"foreign keys in a cycle among {sorted(waiting)}")
        for name in ready:
            ordered.append(name)
            del waiting[name]
    return ordered


def columns(conn: Connection, table: str) -> list[str]:
    if conn.dialect == "sqlite":
        return [str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')]
    return [str(row[0]) for row in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]


def is_empty(conn: Connection) -> bool:
    return all(conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() is None
               for t in tables(conn))


@contextlib.contextmanager
def _reading(conn: Connection) -> Iterator[None]:
    """One snapshot of the source for the whole copy."""
    if conn.dialect == "postgresql":
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
        return
    conn.execute("BEGIN")  # deferred: a read snapshot of the WAL, writers carry on
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def copy_rows(source: Connection, target: Connection, *, label: str = "controller"
              ) -> dict[str, int]:
    """Copy every row of `source` into the empty `target`; returns the rows per table."""
    at, wanted = version(source, label), version(target, label)
    if at != wanted:
        raise Conflict(f"cannot copy a {label} database at schema version {at} into one at "
                       f"{wanted}: open both with the same release first")
    names = parents_first(source, tables(source))
    if set(names) != set(tables(target)):
        raise Conflict(f"the two {label} databases have different tables")
    if not is_empty(target):
        raise Conflict(f"the {label} database to copy into is not empty: copy only into a "
                       "fresh one")
    counts: dict[str, int] = {}
    with _reading(source), target.transaction():
        for table in names:
            have = columns(source, table)
            cols = [c for c in columns(target, table) if c in have or c == "rowid"]
            if "rowid" in have and "rowid" not in cols:  # PostgreSQL's into SQLite's implicit
                cols.append("rowid")
            insert = (f'INSERT INTO "{table}" ({_quoted(cols)}) '
                      f'VALUES ({", ".join("?" for _ in cols)})')
            batch: list[tuple[Any, ...]] = []
            count = 0
            for row in source.stream(f'SELECT {_quoted(cols)} FROM "{table}"'):
                batch.append(tuple(row))
                if len(batch) >= BATCH:
                    target.executemany(insert, batch)
                    count, batch = count + len(batch), []
            if batch:
                target.executemany(insert, batch)
                count += len(batch)
            counts[table] = count
        if target.dialect == "postgresql":
            _advance_identities(target)
    log.info("db_copied db=%s from=%s to=%s tables=%d rows=%d", label, source.dialect,
             target.dialect, len(counts), sum(counts.values()))
    return counts


def _advance_identities(conn: Connection) -> None:
    """Rows came with their numbers: the next number each identity column hands out follows
    them."""
    for table, column in [tuple(r) for r in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'")]:
        conn.execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), "
                     f'COALESCE(MAX("{column}"), 0) + 1, false) FROM "{table}"')
