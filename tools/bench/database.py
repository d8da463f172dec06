"""The controller's hot write path on SQLite and on PostgreSQL: the registry's batched health
flush and the health history's flush for N boxes that each reported once, as the controller
does every `registry.flush_interval` and `history.flush_interval`.

Each backend also gets a floor in the same run: one plain `executemany` INSERT of N rows of the
same width into a scratch table, in one transaction. PostgreSQL is a real cluster started from
Debian's packages on loopback (`tools/postgres.py`), fsync on, as a deployment runs it.

    .venv/bin/python -m tiepdan.tools.bench.database --boxes 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tiepdan.controller.config import HistorySection
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.history.history import History
from tiepdan.controller.store import Database
from tiepdan.firmware import protocol
from tiepdan.tools.postgres import Postgres


def _health(i: int, r: int) -> protocol.Health:
    return protocol.Health(ts=protocol.now_ms(), uptime_s=100.0 + r,
                           cpu_percent=float((i + r) % 100), mem_percent=40.0,
                           disk_free_bytes=(i % 50) * 10**9, disk_total_bytes=32 * 10**9,
                           load1=0.5, outbox=0, cpu_temp_c=55.0, clock_synced=True)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(target: Path | str, boxes: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per flush of `boxes` boxes, over `rounds` rounds."""
    db = Database(target)
    registry = Registry(db)
    with db.transaction():  # the fleet's births, once
        for i in range(boxes):
            device = f"xa-{i:05d}"
            registry.on_birth(device, protocol.Birth(
                seq=0, ts=0, firmware="1", board="sim", boot_id="b", keepalive=10,
                point=protocol.Point(kind="commune", name=device, province=f"p{i % 20}",
                                     commune="c")))
    history = History(db, HistorySection())
    devices = [f"xa-{i:05d}" for i in range(boxes)]
    registry_flush: list[float] = []
    history_flush: list[float] = []
    t0 = 1_800_000_000.0
    for r in range(rounds):
        for i, device in enumerate(devices):
            registry.on_health(device, _health(i, r))
            found = registry.get(device)
            assert found is not None and found.health is not None
            history.add(device, found.health, at=t0 + 10 * r)
        registry_flush.append(_timed(registry.flush))
        history_flush.append(_timed(history.flush))
    db.conn.execute("CREATE TABLE floor (device TEXT, a BIGINT, b BIGINT, v DOUBLE PRECISION)")
    floor: list[float] = []
    for r in range(rounds):
        rows = [(device, r, i, 1.0) for i, device in enumerate(devices)]

        def insert(rows: list[tuple[str, int, int, float]] = rows) -> None:
            with db.transaction() as conn:
                conn.executemany("INSERT INTO floor VALUES (?, ?, ?, ?)", rows)
        floor.append(_timed(insert))
    db.close()
    return {"registry_flush_ms": round(_median(registry_flush) * 1e3, 1),
            "history_flush_ms": round(_median(history_flush) * 1e3, 1),
            "floor_insert_ms": round(_median(floor) * 1e3, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="tiepdan-bench-db-"))
    result: dict[str, float | int] = {"boxes": args.boxes, "rounds": args.rounds}
    try:
        sqlite = run(workdir / "controller.db", args.boxes, args.rounds)
        with Postgres(durable=True) as server:
            postgresql = run(server.create_database("bench"), args.boxes, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.boxes} boxes, median of {args.rounds} flushes (ms):")
    print(f"{'':24}{'sqlite':>10}{'postgresql':>12}{'pg/sqlite':>11}")
    for key in ("registry_flush_ms", "history_flush_ms", "floor_insert_ms"):
        ratio = round(postgresql[key] / sqlite[key], 2) if sqlite[key] else 0.0
        print(f"{key:24}{sqlite[key]:>10}{postgresql[key]:>12}{ratio:>11}")
        result[f"sqlite_{key}"] = sqlite[key]
        result[f"postgresql_{key}"] = postgresql[key]
        result[f"{key.removesuffix('_ms')}_pg_vs_sqlite"] = ratio
    for name, figures in (("sqlite", sqlite), ("postgresql", postgresql)):
        for key in ("registry_flush_ms", "history_flush_ms"):
            result[f"{name}_{key.removesuffix('_ms')}_vs_floor"] = round(
                figures[key] / figures["floor_insert_ms"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
