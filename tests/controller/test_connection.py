"""The connection seam: one SQL text for both databases (placeholders, quoted `?` and `%`, rows
by name and position), and a PostgreSQL connection cut under the controller: the statement
that meets the cut fails, the next one runs on a fresh connection, nothing is lost."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tiepdan.controller.connection import postgresql_sql
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol
from tiepdan.tools.postgres import Postgres


def birth(seq: int, firmware: str) -> protocol.Birth:
    return protocol.Birth(seq=seq, ts=0, firmware=firmware, board="sim", boot_id="b",
                          keepalive=10, point=protocol.Point(kind="commune", name="UBND"))


def test_placeholders_outside_quotes_only() -> None:
    assert postgresql_sql("SELECT '?', \"a?\", ? FROM t WHERE x LIKE 'a%' AND y = ?") == \
        "SELECT '?', \"a?\", %s FROM t WHERE x LIKE 'a%%' AND y = %s"


def test_one_text_reads_the_same_on_both(database: Path | str) -> None:
    db = Database(database)
    row = db.conn.execute("SELECT ? AS a, '50 %' AS b, 'x?' AS c, ? AS d",
                          (7, b"\x00\xff")).fetchone()
    assert (row["a"], row[1], row["c"], bytes(row["d"])) == (7, "50 %", "x?", b"\x00\xff")
    assert dict(row) == {"a": 7, "b": "50 %", "c": "x?", "d": row["d"]}
    assert db.conn.execute("SELECT 'no parameters, 100 %'").fetchone()[0] == \
        "no parameters, 100 %"
    # one unique name, twice: the whole block rolls back
    with pytest.raises(db.conn.IntegrityError), db.transaction() as conn:
        conn.execute("INSERT INTO users VALUES ('lan', 'admin', '', 'h', 1, 0)")
        conn.execute("INSERT INTO users VALUES ('lan', 'admin', '', 'h', 1, 0)")
    assert db.conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0
    db.close()


def test_a_cut_connection_fails_one_statement_then_reconnects(
        postgres_server: Postgres) -> None:
    name = "t_reconnect"
    url = postgres_server.create_database(name)
    try:
        db = Database(url)
        registry = Registry(db)
        registry.on_birth("xa-a", birth(1, "1"))
        pid = db.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(postgres_server.url(name), autocommit=True) as admin:
            # the controller's session ends under it, as a server restart ends it
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):  # the write that meets the cut says so
            registry.on_birth("xa-b", birth(1, "1"))
        registry.on_birth("xa-b", birth(2, "2"))
        assert db.conn.reconnects == 1  # type: ignore[attr-defined]
        assert db.conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        db.close()
        again = Registry(Database(url))
        assert {d.id for d in again.devices()} == {"xa-a", "xa-b"}
        found = again.get("xa-b")
        assert found is not None and found.firmware == "2"
    finally:
        postgres_server.drop_database(name)
