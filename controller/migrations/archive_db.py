"""Migrations of the archive index `archive.db` (recordings, records, segments, closed)."""

from __future__ import annotations

from tiepdan.controller.connection import Connection
from tiepdan.controller.migrations import Migration

# Version 1: the index as release 52e25eb created it.
BASELINE = """
CREATE TABLE IF NOT EXISTS recordings (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    manifest_bytes INTEGER NOT NULL,
    last_kind TEXT NOT NULL DEFAULT '',
    updated_utc_ms INTEGER NOT NULL,
    PRIMARY KEY (session, recorder)
);
CREATE TABLE IF NOT EXISTS records (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    utc_ms INTEGER NOT NULL,
    PRIMARY KEY (session, recorder, seq)
);
CREATE TABLE IF NOT EXISTS segments (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ct_sha256 TEXT NOT NULL,
    ct_size INTEGER NOT NULL,
    pt_sha256 TEXT NOT NULL,
    record_seq INTEGER NOT NULL,
    receipt TEXT,
    PRIMARY KEY (session, recorder, name)
);
CREATE TABLE IF NOT EXISTS frozen (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    frozen_utc_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (session, recorder)
);
CREATE TABLE IF NOT EXISTS closed (
    session TEXT PRIMARY KEY,
    closed_utc_ms INTEGER NOT NULL,
    closed_by TEXT NOT NULL,
    document BLOB NOT NULL
);
"""


def _received_column(conn: Connection) -> None:
    """Archives made before issue 15 lack `records.received_utc_ms`; later ones added it by hand
    at open, so it may already be there."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
    if "received_utc_ms" not in columns:
        conn.execute("ALTER TABLE records ADD COLUMN received_utc_ms INTEGER")


# PostgreSQL's text: BIGINT (epoch milliseconds overflow its INTEGER), BYTEA for BLOB. There
# the index lives in the schema `archive` of the controller's database (`database.url`).
ARCHIVE_SCHEMA = "archive"

BASELINE_POSTGRESQL = """
CREATE TABLE recordings (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    manifest_bytes BIGINT NOT NULL,
    last_kind TEXT NOT NULL DEFAULT '',
    updated_utc_ms BIGINT NOT NULL,
    PRIMARY KEY (session, recorder)
);
CREATE TABLE records (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    utc_ms BIGINT NOT NULL,
    PRIMARY KEY (session, recorder, seq)
);
CREATE TABLE segments (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    name TEXT NOT NULL,
    idx BIGINT NOT NULL,
    ct_sha256 TEXT NOT NULL,
    ct_size BIGINT NOT NULL,
    pt_sha256 TEXT NOT NULL,
    record_seq BIGINT NOT NULL,
    receipt TEXT,
    PRIMARY KEY (session, recorder, name)
);
CREATE TABLE frozen (
    session TEXT NOT NULL,
    recorder TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    frozen_utc_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (session, recorder)
);
CREATE TABLE closed (
    session TEXT PRIMARY KEY,
    closed_utc_ms BIGINT NOT NULL,
    closed_by TEXT NOT NULL,
    document BYTEA NOT NULL
);
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "baseline", BASELINE, postgresql=BASELINE_POSTGRESQL),
    Migration(2, "records.received_utc_ms", _received_column,
              postgresql="ALTER TABLE records ADD COLUMN received_utc_ms BIGINT"),
]
