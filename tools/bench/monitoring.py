"""Running it for years, measured: health history folding and flushing, `/metrics` rendering
and the controller's alert round for a fleet of N boxes, and the schema migration of a full
database from before migrations existed.

Floors measured in the same run: a plain `executemany` INSERT of the same rows (against the
history's UPSERT flush), `/api/devices`' JSON of the same registry (against `/metrics`), and
SQLite's online backup of the same file (against the migration, which takes one first).

    .venv/bin/python -m tiepdan.tools.bench.monitoring --boxes 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from tiepdan.controller.alerts.alerts import Alerts
from tiepdan.controller.config import AlertsSection, HistorySection
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.history.history import History
from tiepdan.controller.metrics.metrics import Metrics
from tiepdan.controller.migrations import controller_db
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol


def _health(i: int) -> protocol.Health:
    return protocol.Health(ts=protocol.now_ms(), uptime_s=100.0, cpu_percent=float(i % 100),
                           mem_percent=40.0, disk_free_bytes=(i % 50) * 10**9,
                           disk_total_bytes=32 * 10**9, load1=0.5, outbox=0, cpu_temp_c=55.0,
                           clock_synced=True, recording_backlog_s=0.0)


def run(boxes: int, rounds: int, events: int, workdir: Path) -> dict[str, float | int]:
    result: dict[str, float | int] = {"boxes": boxes}
    db = Database(workdir / "controller.db")
    registry = Registry(db)
    for i in range(boxes):
        device = f"xa-{i:05d}"
        registry.on_birth(device, protocol.Birth(
            seq=0, ts=0, firmware="1", board="sim", boot_id="b", keepalive=10,
            point=protocol.Point(kind="commune", name=device, province=f"p{i % 20}",
                                 commune="c")))
        registry.on_health(device, _health(i))
    registry.flush()

    # History: `rounds` reports per box (one 10 s bucket each), folded then flushed.
    history = History(db, HistorySection())
    devices = registry.devices()
    fold = flush = 0.0
    t0 = 1_800_000_000.0
    for r in range(rounds):
        start = time.perf_counter()
        for d in devices:
            assert d.health is not None
            history.add(d.id, d.health, at=t0 + 10 * r)
        fold += time.perf_counter() - start
        start = time.perf_counter()
        history.flush()
        flush += time.perf_counter() - start
    reports = boxes * rounds
    result["history_reports"] = reports
    result["history_fold_us_per_report"] = round(fold / reports * 1e6, 2)
    result["history_flush_us_per_report"] = round(flush / reports * 1e6, 2)
    db.conn.execute("CREATE TABLE floor (device TEXT, step INTEGER, bucket INTEGER, v REAL)")
    rows = [(d.id, s, int(t0) + 10 * r, 1.0) for r in range(rounds) for d in devices
            for s in (10, 300)]
    start = time.perf_counter()
    with db.transaction() as conn:
        conn.executemany("INSERT INTO floor VALUES (?, ?, ?, ?)", rows)
    floor = time.perf_counter() - start
    result["floor_insert_us_per_report"] = round(floor / reports * 1e6, 2)
    result["history_flush_vs_insert"] = round(flush / floor, 2)
    start = time.perf_counter()
    day = history.query(devices[0].id, t0, t0 + 86400 - 1, step=10, at=t0 + 3600)
    result["history_query_ms"] = round((time.perf_counter() - start) * 1e3, 2)
    result["history_query_points"] = len(day["points"])

    # /metrics against /api/devices' JSON of the same registry.
    metrics = Metrics(registry, db.conn, lambda: ({"tele": reports}, 0), dict, lambda: 0)
    start = time.perf_counter()
    body, _ = metrics.render()
    render = time.perf_counter() - start
    start = time.perf_counter()
    json_body = json.dumps([d.to_json() for d in registry.devices()])
    floor_json = time.perf_counter() - start
    result["metrics_render_ms"] = round(render * 1e3, 1)
    result["metrics_bytes"] = len(body)
    result["floor_devices_json_ms"] = round(floor_json * 1e3, 1)
    result["floor_devices_json_bytes"] = len(json_body)
    result["metrics_vs_devices_json"] = round(render / floor_json, 2)
    # What the running controller holds its event loop for per scrape (the rest is threaded).
    start = time.perf_counter()
    metrics._collector.snapshot()
    result["metrics_loop_hold_ms"] = round((time.perf_counter() - start) * 1e3, 1)

    # One alert round with every tenth box low on disk (all fire at once).
    alerts = Alerts(db, AlertsSection(), metrics.collect, "bench")
    start = time.perf_counter()
    fired, _ = alerts.evaluate()
    result["alerts_round_ms"] = round((time.perf_counter() - start) * 1e3, 1)
    result["alerts_fired"] = fired
    start = time.perf_counter()
    alerts.evaluate()
    result["alerts_steady_round_ms"] = round((time.perf_counter() - start) * 1e3, 1)
    db.close()

    # Migration of a database from before migrations (version 0), `events` rows in it.
    old = workdir / "old.db"
    old_conn = sqlite3.connect(old, isolation_level=None)
    old_conn.executescript(controller_db.BASELINE)
    old_conn.execute("BEGIN")
    old_conn.executemany("INSERT INTO events (device, event_id, kind, ts, received, data) "
                     "VALUES (?, ?, 'button', 0, 0, '{}')",
                     ((f"xa-{i % boxes:05d}", f"e{i}") for i in range(events)))
    old_conn.execute("COMMIT")
    start = time.perf_counter()
    copy = sqlite3.connect(workdir / "floor.bak")
    old_conn.backup(copy)
    copy.close()
    backup = time.perf_counter() - start
    old_conn.close()
    result["migration_rows"] = events
    result["migration_db_mb"] = round(old.stat().st_size / 2**20, 1)
    start = time.perf_counter()
    Database(old).close()
    migration = time.perf_counter() - start
    result["migration_s"] = round(migration, 3)
    result["floor_backup_s"] = round(backup, 3)
    result["migration_vs_backup"] = round(migration / backup, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6, help="health reports per box")
    parser.add_argument("--events", type=int, default=200_000,
                        help="rows in the database the migration upgrades")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="tiepdan-monitoring-bench-"))
    try:
        result = run(args.boxes, args.rounds, args.events, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
