"""Moving a controller between SQLite and PostgreSQL: `tiepdan-controller copy-database` copies
every row of a full database (every table filled) into an empty PostgreSQL one and back into a
new SQLite file with nothing lost or reordered; the numbers handed out next follow the copied
ones; a database that is not empty, or at another schema version, is refused untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.controller.test_migrations import load
from tiepdan.controller.cli.main import main
from tiepdan.controller.connection import Connection, SqliteConnection
from tiepdan.controller.migrations import controller_db, migrate
from tiepdan.controller.migrations.transfer import columns, copy_rows, open_database, tables
from tiepdan.controller.store import Database
from tiepdan.errors import Conflict
from tiepdan.tools.postgres import Postgres


def rows(conn: Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows in insertion order where the stores read it so, else sorted."""
    out = {}
    for table in tables(conn):
        order = ' ORDER BY "rowid"' if table in ("session_points", "ota_boxes") else ""
        names = ", ".join(f'"{c}"' for c in columns(conn, table) if c != "rowid")
        found = [tuple(r) for r in conn.execute(f'SELECT {names} FROM "{table}"{order}')]
        out[table] = found if order else sorted(found, key=repr)
    return out


def test_a_full_controller_moves_to_postgresql_and_back(
        tmp_path: Path, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "controller.db"
    load("controller-52e25eb.sql", old)
    source = Database(old)  # brought to this release's schema, as the CLI does
    source.conn.execute("INSERT INTO session_points (session, device, role, call, state) "
                        "VALUES ('sess-0', 'aa-last-by-rowid', 'guest', 'c-x', 'x')")
    for sql in (  # the tables later releases added, one row each
            "INSERT INTO device_health VALUES ('xa-a', 10, 1000, 2, 1.5, 1.0, 2.5, 2.0, 0.5, "
            "0.25, 90.0, 2, 46.0, 3)",
            "INSERT INTO alerts (rule, labels, severity, summary, started) VALUES "
            "('DiskLow', '{}', 'warning', 'Đĩa còn dưới 10 %', 1.5)",
            "INSERT INTO users VALUES ('lan', 'admin', '', 'argon2-hash', 1.5, 0)",
            "INSERT INTO logins VALUES ('d1', 'lan', 'csrf', 1.5, 2.5)",
            "INSERT INTO api_tokens VALUES ('d2', 'lan', 'script', 1.5, NULL)",
            "INSERT INTO audit (at, \"user\", action, target) VALUES (1.5, 'lan', 'x', 'y')"):
        source.conn.execute(sql)
    before = rows(source.conn)
    assert all(before.values()) and len(before) == 20
    source.close()
    name = "t_transfer"
    url = postgres_server.create_database(name)
    try:
        index = tmp_path / "archive" / "archive.db"  # the archive index moves along
        index.parent.mkdir()
        load("archive-52e25eb.sql", index)
        archive = open_database(index, "archive")
        archived = rows(archive)
        assert len(archived) == 5 and all(archived.values())
        archive.close()
        config = tmp_path / "controller.toml"
        config.write_text(f'[controller]\ndata_dir = "{tmp_path}"\n')
        assert main(["--config", str(config), "copy-database", url]) == 0
        said = capsys.readouterr().out
        assert "controller: copied" in said and "archive: copied" in said
        assert postgres_server.password not in said
        moved_index = open_database(url, "archive")
        assert rows(moved_index) == archived
        moved_index.close()
        moved = Database(url)
        assert rows(moved.conn) == before
        # The next numbers follow the copied ones.
        top = moved.conn.execute("SELECT MAX(n) FROM events").fetchone()[0]
        n = moved.conn.execute("INSERT INTO events (device, event_id, kind, ts, received, "
                               "data) VALUES ('d', 'new', 'k', 0, 0, '{}') RETURNING n"
                               ).fetchone()[0]
        assert n > top
        moved.conn.execute("DELETE FROM events WHERE event_id = 'new'")
        moved.close()

        # A second copy into the same database is refused, and leaves it as it was.
        assert main(["--config", str(config), "copy-database", url]) == 1
        assert "not empty" in capsys.readouterr().out
        back = tmp_path / "back.db"
        assert main(["--config", str(config), "copy-database", str(back), "--from", url]) == 0
        assert back.stat().st_mode & 0o077 == 0  # identities and token hashes: private
        again = Database(back)
        assert rows(again.conn) == before
        again.close()
    finally:
        postgres_server.drop_database(name)


def test_another_schema_version_is_refused(tmp_path: Path, postgres_server: Postgres) -> None:
    conn = sqlite3.connect(tmp_path / "older.db", isolation_level=None)
    migrate(conn, controller_db.MIGRATIONS[:2], label="controller")
    name = "t_transfer_old"
    url = postgres_server.create_database(name)
    try:
        target = Database(url)
        with pytest.raises(Conflict, match="schema version 2"):
            copy_rows(SqliteConnection(conn), target.conn)
        target.close()
    finally:
        postgres_server.drop_database(name)
        conn.close()
