"""Schema migrations: a database written by the release before migrations existed (52e25eb),
full of data, upgrades in place with nothing lost; a failing step leaves the file as it was; a
file from a newer release is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tiepdan.controller.connection import Connection, connect, is_postgresql
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.identities import Identities
from tiepdan.controller.migrations import (
    Migration,
    SchemaTooNew,
    archive_db,
    controller_db,
    migrate,
)
from tiepdan.controller.migrations import version as schema_version
from tiepdan.controller.store import Database
from tiepdan.tools.postgres import Postgres

FIXTURES = Path(__file__).parent / "fixtures"


def load(sql: str, path: Path) -> None:
    """Make the old file from its dump (made from 52e25eb's SCHEMA strings, every table filled)."""
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / sql).read_text())
    conn.close()


def snapshot(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
    finally:
        conn.close()


def test_a_controller_db_from_before_migrations_upgrades_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    load("controller-52e25eb.sql", path)
    before = snapshot(path)
    assert len(before) == 14 and all(len(rows) == 3 for rows in before.values())

    db = Database(path)
    assert db.migrated_from == 0
    assert schema_version(db.conn) == len(controller_db.MIGRATIONS)
    db.close()

    after = snapshot(path)
    for table, rows in before.items():
        assert after[table] == rows, table
    # The copy taken before the upgrade is the old file, untouched.
    assert snapshot(tmp_path / "controller.db.v0.bak") == before
    assert (tmp_path / "controller.db.v0.bak").stat().st_mode & 0o077 == 0

    # The stores read the upgraded rows and the append-only trigger still holds.
    db = Database(path)
    assert db.migrated_from == len(controller_db.MIGRATIONS)
    assert Registry(db).get("devices-id-1") is not None
    assert Identities(db).get("device_identities-device-2") is not None
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.conn.execute("DELETE FROM ota_audit")
    db.close()


def test_an_archive_index_from_before_migrations_upgrades_with_nothing_lost(
        tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    load("archive-52e25eb.sql", path)
    before = snapshot(path)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, archive_db.MIGRATIONS, label="archive", path=path) == 0
    conn.close()
    assert snapshot(path) == before


def test_an_index_from_before_issue_15_gains_its_column(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(archive_db.BASELINE)
    conn.execute("INSERT INTO records VALUES ('s', 'r', 0, 'h', 'segment', 5)")
    migrate(conn, archive_db.MIGRATIONS, label="archive")
    row = conn.execute("SELECT seq, received_utc_ms FROM records").fetchone()
    assert row == (0, None)


def test_a_new_database_gets_every_table(tmp_path: Path) -> None:
    db = Database(tmp_path / "controller.db")
    names = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"devices", "sessions", "ota_campaigns", "provisioned_boxes"} <= names
    assert not (tmp_path / "controller.db.v0.bak").exists()  # nothing to keep
    db.close()


def test_a_failing_step_rolls_back_its_version_and_its_changes(database: Path | str) -> None:
    path = None if is_postgresql(database) else Path(database)
    conn = connect(database)

    def boom(c: Connection) -> None:
        c.execute("INSERT INTO t VALUES (2, 'lost')")
        raise RuntimeError("injected")

    steps = [Migration(1, "t", "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);"),
             Migration(2, "add", "ALTER TABLE t ADD COLUMN y TEXT; UPDATE t SET y = 'kept';"),
             Migration(3, "boom", boom)]
    with pytest.raises(RuntimeError, match="injected"):
        migrate(conn, steps, label="x", path=path)
    assert schema_version(conn, "x") == 2
    assert [tuple(r) for r in conn.execute("SELECT x, y FROM t")] == [(1, "kept")]
    # Fixed in the next release: the run resumes at step 3 only.
    steps[2] = Migration(3, "fixed", "INSERT INTO t VALUES (3, 'new');")
    assert migrate(conn, steps, label="x", path=path) == 2
    assert [tuple(r) for r in conn.execute("SELECT x FROM t ORDER BY x")] == [(1,), (3,)]
    conn.close()


def test_a_file_from_a_newer_release_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    Database(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(controller_db.MIGRATIONS) + 1}")
    conn.close()
    before = snapshot(path)
    with pytest.raises(SchemaTooNew, match="newer release"):
        Database(path)
    assert snapshot(path) == before


def test_migrations_are_numbered_without_gaps() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(ValueError, match="numbered"):
        migrate(conn, [Migration(2, "x", "SELECT 1;")], label="x")




class StaleFirstRead(sqlite3.Connection):
    """Reads version 0 once, as a process does that looked just before another committed."""

    stale = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "PRAGMA user_version" and self.stale:
            self.stale = False
            return super().execute("SELECT 0")
        return super().execute(sql, *args)


def test_two_processes_opening_at_once_migrate_once(tmp_path: Path) -> None:
    """A CLI opening while the controller starts: the second opener skips the steps the first
    applied in the meantime instead of failing on them."""
    path = tmp_path / "controller.db"
    Database(path).close()
    late = sqlite3.connect(path, isolation_level=None, factory=StaleFirstRead)
    assert migrate(late, controller_db.MIGRATIONS, label="controller") == 0  # it read 0
    assert schema_version(late) == len(controller_db.MIGRATIONS)
    late.close()


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_snapshot(conn: Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name != 'schema_versions'")]
    return {t: sorted((tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"')), key=repr)
            for t in tables}


def test_a_full_postgresql_database_upgrades_with_nothing_lost(
        tmp_path: Path, postgres_server: Postgres) -> None:
    """The oldest PostgreSQL schema there is (version 1), holding the same rows as the SQLite
    fixture, upgrades to the latest with every row as it was."""
    old = tmp_path / "old.db"
    load("controller-52e25eb.sql", old)
    rows = snapshot(old)
    name = "t_upgrade"
    url = postgres_server.create_database(name)
    try:
        conn = connect(url)
        migrate(conn, controller_db.MIGRATIONS[:1], label="controller")
        # The fixture's rows were made without foreign keys, as pg_restore --disable-triggers
        # would load them.
        conn.execute("SET session_replication_role = replica")
        for table, values in rows.items():
            columns = [r[1] for r in sqlite3.connect(old).execute(f'PRAGMA table_info("{table}")')]
            conn.executemany(
                f'INSERT INTO "{table}" ({", ".join(columns)}) '
                f'VALUES ({", ".join("?" for _ in columns)})', values)
        conn.execute("SET session_replication_role = DEFAULT")
        before = pg_snapshot(conn)
        assert len(before) == 14 and all(len(v) == 3 for v in before.values())
        conn.close()

        db = Database(url)
        assert db.migrated_from == 1
        assert schema_version(db.conn) == len(controller_db.MIGRATIONS)
        after = pg_snapshot(db.conn)
        for table, values in before.items():
            assert after[table] == values, table
        assert Registry(db).get("devices-id-1") is not None
        identity = Identities(db).get("device_identities-device-2")
        assert identity is not None and identity.sign_key == bytes([2]) * 32
        with pytest.raises(db.conn.IntegrityError, match="append-only"):
            db.conn.execute("DELETE FROM ota_audit")
        with pytest.raises(db.conn.IntegrityError, match="append-only"):
            db.conn.execute("TRUNCATE ota_audit")
        db.close()
        assert Database(url).migrated_from == len(controller_db.MIGRATIONS)
    finally:
        postgres_server.drop_database(name)


def columns_of(db: Database) -> dict[str, set[str]]:
    if db.dialect == "sqlite":
        tables = [r[0] for r in db.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: {r[1] for r in db.conn.execute(f'PRAGMA table_info("{t}")')}
                for t in tables}
    found: dict[str, set[str]] = {}
    for table, column in db.conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name != 'schema_versions'"):
        found.setdefault(table, set()).add(column)
    return found


def test_both_dialects_build_the_same_tables(tmp_path: Path, postgres_server: Postgres) -> None:
    """PostgreSQL's text of each migration keeps step with SQLite's: same tables, same columns
    (plus the explicit `rowid` where SQLite has an implicit one)."""
    sqlite_db = Database(tmp_path / "c.db")
    name = "t_parity"
    url = postgres_server.create_database(name)
    try:
        pg_db = Database(url)
        expected = columns_of(sqlite_db)
        for table in ("session_points", "ota_boxes"):
            expected[table] = expected[table] | {"rowid"}
        assert columns_of(pg_db) == expected
        pg_db.close()
    finally:
        postgres_server.drop_database(name)
    sqlite_db.close()


def test_the_archive_index_has_the_same_tables_on_both(tmp_path: Path,
                                                       postgres_server: Postgres) -> None:
    """The archive index's PostgreSQL text keeps step with SQLite's, in its own schema."""
    from tiepdan.controller.migrations.transfer import columns, open_database, tables

    name = "t_archive_parity"
    url = postgres_server.create_database(name)
    try:
        found = {}
        for place in (tmp_path / "archive.db", url):
            conn = open_database(place, "archive")
            found[conn.dialect] = {t: columns(conn, t) for t in tables(conn)}
            conn.close()
        assert found["postgresql"] == found["sqlite"]
        assert "received_utc_ms" in found["postgresql"]["records"]
        controller = Database(url)  # the controller's tables stay apart, in public
        assert "records" not in tables(controller.conn)
        controller.close()
    finally:
        postgres_server.drop_database(name)


def test_a_postgresql_database_from_a_newer_release_is_refused(database: Path | str) -> None:
    Database(database).close()
    conn = connect(database)
    if conn.dialect == "sqlite":
        conn.execute(f"PRAGMA user_version = {len(controller_db.MIGRATIONS) + 1}")
    else:
        conn.execute("UPDATE schema_versions SET version = version + 1 WHERE db = 'controller'")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer release"):
        Database(database)
