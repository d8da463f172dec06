"""Migrations of `controller.db`: every table of the fleet, sessions, schedules, campaigns,
identities and provisioning lives here (the modules that use a table no longer create it)."""

from __future__ import annotations

from tiepdan.controller.migrations import Migration

# Version 1: the tables exactly as release 52e25eb created them with `CREATE ... IF NOT EXISTS`
# in six modules; on a database made by that release it changes nothing but the version.
BASELINE = """
-- fleet registry (controller/fleet/registry.py)
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    province TEXT NOT NULL DEFAULT '',
    commune TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'unknown',
    seq INTEGER NOT NULL DEFAULT -1,
    firmware TEXT NOT NULL DEFAULT '',
    board TEXT NOT NULL DEFAULT '',
    boot_id TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL DEFAULT '[]',
    since REAL NOT NULL DEFAULT 0,
    last_seen REAL NOT NULL DEFAULT 0,
    health TEXT,
    reported TEXT,
    desired TEXT,
    desired_version INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received REAL NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (device, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device, n);
-- device identities (controller/identities.py)
CREATE TABLE IF NOT EXISTS device_identities (
    device TEXT PRIMARY KEY,
    sign_key BLOB NOT NULL,
    cert_serial TEXT,
    cert_fingerprint TEXT,
    enrolled_at REAL NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT
);
-- sessions (controller/sessions/engine.py)
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    auto_join INTEGER NOT NULL DEFAULT 0,
    schedule TEXT,
    starts_at REAL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state);
CREATE TABLE IF NOT EXISTS session_points (
    session TEXT NOT NULL REFERENCES sessions (id),
    device TEXT NOT NULL,
    role TEXT NOT NULL,
    call TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    invited_at REAL,
    joined_at REAL,
    left_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    answer TEXT,
    PRIMARY KEY (session, device)
);
CREATE TABLE IF NOT EXISTS session_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    ts REAL NOT NULL,
    device TEXT,
    what TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS session_log_by_session ON session_log (session, n);
-- schedules (controller/sessions/schedule.py)
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    every TEXT NOT NULL,
    timezone TEXT NOT NULL,
    host TEXT NOT NULL,
    invite TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    auto_join INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    next_session TEXT
);
-- OTA campaigns (controller/updates/campaign.py)
CREATE TABLE IF NOT EXISTS ota_campaigns (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    wave INTEGER NOT NULL DEFAULT 0,
    wave_started REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ota_boxes (
    campaign TEXT NOT NULL REFERENCES ota_campaigns(id),
    device TEXT NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    step TEXT NOT NULL DEFAULT '',
    progress REAL,
    reason TEXT NOT NULL DEFAULT '',
    running TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL DEFAULT -1,
    notified REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign, device)
);
CREATE INDEX IF NOT EXISTS ota_boxes_by_state ON ota_boxes (campaign, wave, state);
CREATE TABLE IF NOT EXISTS ota_history (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    device TEXT NOT NULL,
    campaign TEXT NOT NULL,
    status TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    running TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ota_history_by_device ON ota_history (device, n);
CREATE TABLE IF NOT EXISTS ota_audit (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    campaign TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS ota_audit_no_update BEFORE UPDATE ON ota_audit
BEGIN SELECT RAISE(ABORT, 'ota_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ota_audit_no_delete BEFORE DELETE ON ota_audit
BEGIN SELECT RAISE(ABORT, 'ota_audit is append-only'); END;
-- provisioned boxes and certificates (provisioning/claims.py)
CREATE TABLE IF NOT EXISTS provisioned_boxes (
    device TEXT PRIMARY KEY,
    commune TEXT NOT NULL,
    hall TEXT NOT NULL,
    province TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'commune',
    token_hash TEXT NOT NULL UNIQUE,
    token_expires REAL NOT NULL,
    created_at REAL NOT NULL,
    enrolled_at REAL,
    enrolled_from TEXT,
    tls_key TEXT,
    sign_key BLOB,
    cert_pem TEXT,
    cert_serial TEXT,
    cert_not_after REAL,
    revoked_at REAL,
    revoked_reason TEXT
);
CREATE TABLE IF NOT EXISTS device_certificates (
    serial TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    not_after REAL NOT NULL,
    issued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS device_certificates_device ON device_certificates (device);
CREATE TABLE IF NOT EXISTS revoked_certificates (
    serial TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    not_after REAL NOT NULL,
    revoked_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""

# Version 2: health history per box, in fixed buckets (controller/history/history.py).
HEALTH_HISTORY = """
CREATE TABLE device_health (
    device TEXT NOT NULL,
    step INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    cpu_sum REAL NOT NULL,
    cpu_max REAL NOT NULL,
    mem_sum REAL NOT NULL,
    mem_max REAL NOT NULL,
    load_sum REAL NOT NULL,
    disk_free_min REAL,
    temp_sum REAL NOT NULL DEFAULT 0,
    temp_n INTEGER NOT NULL DEFAULT 0,
    temp_max REAL,
    outbox_max INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, step, bucket)
) WITHOUT ROWID;
CREATE INDEX device_health_by_age ON device_health (step, bucket);
"""

# Version 3: alerts the controller raised itself (controller/alerts/alerts.py); one active row
# per rule and label set.
ALERTS = """
CREATE TABLE alerts (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    started REAL NOT NULL,
    resolved REAL,
    sent_firing REAL,
    sent_resolved REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX alerts_active ON alerts (rule, labels) WHERE resolved IS NULL;
"""

# Version 4: the web console's people (issue 13): accounts, sign-in sessions, API tokens and the
# append-only audit log.
PEOPLE = """
-- people: users (controller/people/users.py)
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    province TEXT NOT NULL DEFAULT '',
    password TEXT NOT NULL,
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);

-- people: logins (controller/people/logins.py)
CREATE TABLE IF NOT EXISTS logins (
    digest TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    seen REAL NOT NULL
);

-- people: tokens (controller/people/tokens.py)
CREATE TABLE IF NOT EXISTS api_tokens (
    digest TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL
);

-- people: audit (controller/people/audit.py)
CREATE TABLE IF NOT EXISTS audit (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# PostgreSQL's text of the same steps: BIGINT for INTEGER (epoch milliseconds overflow its
# 32-bit INTEGER), DOUBLE PRECISION for REAL (its REAL is 32-bit), BYTEA for BLOB, identity
# columns for AUTOINCREMENT, `"user"` quoted (a reserved word there), plpgsql for the
# append-only triggers, and an explicit `rowid` on the two tables whose rows are read in the
# order they were written (SQLite has one implicitly). A database made on PostgreSQL starts at
# version 1, so no `IF NOT EXISTS` is needed.
BASELINE_POSTGRESQL = """
-- fleet registry (controller/fleet/registry.py)
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    province TEXT NOT NULL DEFAULT '',
    commune TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'unknown',
    seq BIGINT NOT NULL DEFAULT -1,
    firmware TEXT NOT NULL DEFAULT '',
    board TEXT NOT NULL DEFAULT '',
    boot_id TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL DEFAULT '[]',
    since DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
    health TEXT,
    reported TEXT,
    desired TEXT,
    desired_version BIGINT NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE events (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts BIGINT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (device, event_id)
);
CREATE INDEX events_by_device ON events (device, n);
-- device identities (controller/identities.py)
CREATE TABLE device_identities (
    device TEXT PRIMARY KEY,
    sign_key BYTEA NOT NULL,
    cert_serial TEXT,
    cert_fingerprint TEXT,
    enrolled_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    revoked_reason TEXT
);
-- sessions (controller/sessions/engine.py)
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    auto_join BIGINT NOT NULL DEFAULT 0,
    schedule TEXT,
    starts_at DOUBLE PRECISION,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    ended DOUBLE PRECISION,
    end_reason TEXT
);
CREATE INDEX sessions_by_state ON sessions (state);
CREATE TABLE session_points (
    rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    session TEXT NOT NULL REFERENCES sessions (id),
    device TEXT NOT NULL,
    role TEXT NOT NULL,
    call TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    invited_at DOUBLE PRECISION,
    joined_at DOUBLE PRECISION,
    left_at DOUBLE PRECISION,
    detail TEXT NOT NULL DEFAULT '',
    answer TEXT,
    PRIMARY KEY (session, device)
);
CREATE TABLE session_log (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    session TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    device TEXT,
    what TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX session_log_by_session ON session_log (session, n);
-- schedules (controller/sessions/schedule.py)
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    every TEXT NOT NULL,
    timezone TEXT NOT NULL,
    host TEXT NOT NULL,
    invite TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    auto_join BIGINT NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    next_session TEXT
);
-- OTA campaigns (controller/updates/campaign.py)
CREATE TABLE ota_campaigns (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    wave BIGINT NOT NULL DEFAULT 0,
    wave_started DOUBLE PRECISION NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE TABLE ota_boxes (
    rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    campaign TEXT NOT NULL REFERENCES ota_campaigns(id),
    device TEXT NOT NULL,
    wave BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    step TEXT NOT NULL DEFAULT '',
    progress DOUBLE PRECISION,
    reason TEXT NOT NULL DEFAULT '',
    running TEXT NOT NULL DEFAULT '',
    seq BIGINT NOT NULL DEFAULT -1,
    notified DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign, device)
);
CREATE INDEX ota_boxes_by_state ON ota_boxes (campaign, wave, state);
CREATE TABLE ota_history (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    device TEXT NOT NULL,
    campaign TEXT NOT NULL,
    status TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    running TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ota_history_by_device ON ota_history (device, n);
CREATE TABLE ota_audit (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    campaign TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER ota_audit_no_change BEFORE UPDATE OR DELETE ON ota_audit
FOR EACH ROW EXECUTE FUNCTION append_only('ota_audit is append-only');
CREATE TRIGGER ota_audit_no_truncate BEFORE TRUNCATE ON ota_audit
FOR EACH STATEMENT EXECUTE FUNCTION append_only('ota_audit is append-only');
-- provisioned boxes and certificates (provisioning/claims.py)
CREATE TABLE provisioned_boxes (
    device TEXT PRIMARY KEY,
    commune TEXT NOT NULL,
    hall TEXT NOT NULL,
    province TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'commune',
    token_hash TEXT NOT NULL UNIQUE,
    token_expires DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    enrolled_at DOUBLE PRECISION,
    enrolled_from TEXT,
    tls_key TEXT,
    sign_key BYTEA,
    cert_pem TEXT,
    cert_serial TEXT,
    cert_not_after DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    revoked_reason TEXT
);
CREATE TABLE device_certificates (
    serial TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    not_after DOUBLE PRECISION NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX device_certificates_device ON device_certificates (device);
CREATE TABLE revoked_certificates (
    serial TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    not_after DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL
);
"""

HEALTH_HISTORY_POSTGRESQL = """
CREATE TABLE device_health (
    device TEXT NOT NULL,
    step BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    n BIGINT NOT NULL,
    cpu_sum DOUBLE PRECISION NOT NULL,
    cpu_max DOUBLE PRECISION NOT NULL,
    mem_sum DOUBLE PRECISION NOT NULL,
    mem_max DOUBLE PRECISION NOT NULL,
    load_sum DOUBLE PRECISION NOT NULL,
    disk_free_min DOUBLE PRECISION,
    temp_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    temp_n BIGINT NOT NULL DEFAULT 0,
    temp_max DOUBLE PRECISION,
    outbox_max BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (device, step, bucket)
);
CREATE INDEX device_health_by_age ON device_health (step, bucket);
"""

ALERTS_POSTGRESQL = """
CREATE TABLE alerts (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    rule TEXT NOT NULL,
    labels TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    resolved DOUBLE PRECISION,
    sent_firing DOUBLE PRECISION,
    sent_resolved DOUBLE PRECISION,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX alerts_active ON alerts (rule, labels) WHERE resolved IS NULL;
"""

PEOPLE_POSTGRESQL = """
-- people: users (controller/people/users.py)
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    province TEXT NOT NULL DEFAULT '',
    password TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0
);

-- people: logins (controller/people/logins.py)
CREATE TABLE logins (
    digest TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    seen DOUBLE PRECISION NOT NULL
);

-- people: tokens (controller/people/tokens.py)
CREATE TABLE api_tokens (
    digest TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION
);

-- people: audit (controller/people/audit.py)
CREATE TABLE audit (
    n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    "user" TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
FOR EACH ROW EXECUTE FUNCTION append_only('the audit log is append-only');
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
FOR EACH STATEMENT EXECUTE FUNCTION append_only('the audit log is append-only');
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "baseline", BASELINE, postgresql=BASELINE_POSTGRESQL),
    Migration(2, "device_health", HEALTH_HISTORY, postgresql=HEALTH_HISTORY_POSTGRESQL),
    Migration(3, "alerts", ALERTS, postgresql=ALERTS_POSTGRESQL),
    Migration(4, "people", PEOPLE, postgresql=PEOPLE_POSTGRESQL),
]
