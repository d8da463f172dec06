"""Health history per box: every `tele/health` folded into two tiers of fixed buckets.

The fine tier (10 s buckets, kept a day) shows what a box did during one session; the coarse
tier (5 min buckets, kept 90 days) shows trends (a disk filling, a hall that overheats every
afternoon). A bucket keeps sums, maxima and minima, not samples, so folding is exact whatever
the box's reporting interval and the size is bounded by time alone: at most keep/step rows per
box per tier (8,640 + 25,920 with the defaults), whatever the box sends. Buckets are placed by
the controller's clock when the report arrives: a box's own clock may not be synchronised yet.

Reports are folded in memory and written in one transaction per flush (on the event loop, like
the registry's batched writes, because both share one database connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from tiepdan.controller.config import HistorySection
from tiepdan.controller.fleet.registry import Device
from tiepdan.controller.store import Database
from tiepdan.errors import BadInput

log = logging.getLogger(__name__)

# Its table (device_health) is created by controller/migrations/controller_db.py (version 2).


@dataclass
class Bucket:
    """Sums and extremes of the reports that fell into one bucket."""

    n: int = 0
    cpu_sum: float = 0.0
    cpu_max: float = 0.0
    mem_sum: float = 0.0
    mem_max: float = 0.0
    load_sum: float = 0.0
    disk_free_min: float | None = None
    temp_sum: float = 0.0
    temp_n: int = 0
    temp_max: float | None = None
    outbox_max: int = 0

    def add(self, health: dict[str, Any]) -> None:
        cpu, mem = float(health["cpu_percent"]), float(health["mem_percent"])
        self.n += 1
        self.cpu_sum += cpu
        self.cpu_max = max(self.cpu_max, cpu)
        self.mem_sum += mem
        self.mem_max = max(self.mem_max, mem)
        self.load_sum += float(health["load1"])
        total = int(health["disk_total_bytes"])
        if total > 0:
            free = int(health["disk_free_bytes"]) / total
            self.disk_free_min = free if self.disk_free_min is None else min(
                self.disk_free_min, free)
        temp = health.get("cpu_temp_c")
        if temp is not None:
            self.temp_sum += float(temp)
            self.temp_n += 1
            self.temp_max = float(temp) if self.temp_max is None else max(self.temp_max,
                                                                           float(temp))
        self.outbox_max = max(self.outbox_max, int(health.get("outbox", 0)))

    def merge(self, other: Bucket) -> None:
        self.n += other.n
        self.cpu_sum += other.cpu_sum
        self.cpu_max = max(self.cpu_max, other.cpu_max)
        self.mem_sum += other.mem_sum
        self.mem_max = max(self.mem_max, other.mem_max)
        self.load_sum += other.load_sum
        self.disk_free_min = _least(self.disk_free_min, other.disk_free_min)
        self.temp_sum += other.temp_sum
        self.temp_n += other.temp_n
        if other.temp_max is not None:
            self.temp_max = other.temp_max if self.temp_max is None else max(self.temp_max,
                                                                             other.temp_max)
        self.outbox_max = max(self.outbox_max, other.outbox_max)


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


_COLUMNS = ("n", "cpu_sum", "cpu_max", "mem_sum", "mem_max", "load_sum", "disk_free_min",
            "temp_sum", "temp_n", "temp_max", "outbox_max")

# Merging a flushed bucket into the stored one: sums add, extremes stay extreme (NULL-aware).
# The stored row's columns are named with the table (PostgreSQL finds a bare name ambiguous
# beside `excluded`); the two-argument extremes are max()/min() in SQLite, GREATEST/LEAST in
# PostgreSQL.
def _upsert(greatest: str, least: str) -> str:
    t = "device_health"
    return (
        f"INSERT INTO {t} (device, step, bucket, " + ", ".join(_COLUMNS) + ") "
        "VALUES (?, ?, ?, " + ", ".join("?" for _ in _COLUMNS) + ") "
        "ON CONFLICT (device, step, bucket) DO UPDATE SET "
        f"n = {t}.n + excluded.n, cpu_sum = {t}.cpu_sum + excluded.cpu_sum, "
        f"cpu_max = {greatest}({t}.cpu_max, excluded.cpu_max), "
        f"mem_sum = {t}.mem_sum + excluded.mem_sum, "
        f"mem_max = {greatest}({t}.mem_max, excluded.mem_max), "
        f"load_sum = {t}.load_sum + excluded.load_sum, "
        f"disk_free_min = coalesce({least}({t}.disk_free_min, excluded.disk_free_min), "
        f"{t}.disk_free_min, excluded.disk_free_min), "
        f"temp_sum = {t}.temp_sum + excluded.temp_sum, temp_n = {t}.temp_n + excluded.temp_n, "
        f"temp_max = coalesce({greatest}({t}.temp_max, excluded.temp_max), {t}.temp_max, "
        "excluded.temp_max), "
        f"outbox_max = {greatest}({t}.outbox_max, excluded.outbox_max)"
    )


class History:
    def __init__(self, db: Database, config: HistorySection) -> None:
        self._db = db
        self.config = config
        self._pending: dict[tuple[str, int, int], Bucket] = {}
        self._upsert = _upsert(db.conn.greatest, db.conn.least)

    @property
    def tiers(self) -> tuple[tuple[int, float], ...]:
        """(bucket width, seconds kept) per tier."""
        c = self.config
        return ((c.fine_step, c.fine_keep_hours * 3600),
                (c.coarse_step, c.coarse_keep_days * 86400))

    def on_device(self, device: Device, what: str) -> None:
        """Registry listener: fold each health report into both tiers."""
        if what == "health" and device.health is not None:
            self.add(device.id, device.health)

    def add(self, device: str, health: dict[str, Any], at: float | None = None) -> None:
        at = time.time() if at is None else at
        for step, _ in self.tiers:
            bucket = int(at // step) * step
            self._pending.setdefault((device, step, bucket), Bucket()).add(health)

    def flush(self) -> int:
        """Write what was folded since the last flush; returns the rows touched."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        rows = [(device, step, bucket, *(getattr(b, c) for c in _COLUMNS))
                for (device, step, bucket), b in pending.items()]
        try:
            with self._db.transaction() as conn:
                conn.executemany(self._upsert, rows)
        except BaseException:
            for key, bucket in pending.items():  # keep them for the next round
                self._pending.setdefault(key, Bucket()).merge(bucket)
            raise
        return len(rows)

    def prune(self, at: float | None = None) -> int:
        """Drop buckets older than their tier keeps (and any of a step no longer configured,
        once older than the longest keep); returns the rows removed."""
        at = time.time() if at is None else at
        removed = 0
        with self._db.transaction() as conn:
            for step, keep in self.tiers:
                removed += conn.execute("DELETE FROM device_health WHERE step = ? AND bucket < ?",
                                        (step, at - keep)).rowcount
            longest = max(keep for _, keep in self.tiers)
            steps = [step for step, _ in self.tiers]
            removed += conn.execute(
                "DELETE FROM device_health WHERE step NOT IN (?, ?) AND bucket < ?",
                (*steps, at - longest)).rowcount
        if removed:
            log.info("history_pruned rows=%d", removed)
        return removed

    async def run(self) -> None:
        """Flush every `flush_interval`, prune about hourly; a failed write is logged and the
        folded buckets of that round are lost, never the loop."""
        rounds, prune_every = 0, max(1, int(3600 / self.config.flush_interval))
        while True:
            await asyncio.sleep(self.config.flush_interval)
            try:
                self.flush()
                rounds += 1
                if rounds % prune_every == 1:
                    self.prune()
            except Exception:
                log.exception("history_flush_failed")

    def query(self, device: str, since: float, until: float, step: int | None = None,
              at: float | None = None) -> dict[str, Any]:
        """Points of one box between `since` and `until` (epoch seconds). Without `step`, the
        fine tier while the window is still inside it, else the coarse one."""
        at = time.time() if at is None else at
        if until < since:
            raise BadInput("history: until is before since")
        steps = {s for s, _ in self.tiers}
        if step is None:
            fine, keep = self.tiers[0]
            step = fine if since >= at - keep else self.tiers[1][0]
        elif step not in steps:
            raise BadInput(f"history: step must be one of {sorted(steps)}")
        if (until - since) / step > self.config.max_points:
            raise BadInput(f"history: more than {self.config.max_points} points asked; narrow "
                           f"the window or use a wider step")
        self.flush()
        rows = self._db.conn.execute(
            "SELECT bucket, " + ", ".join(_COLUMNS) + " FROM device_health "
            "WHERE device = ? AND step = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket",
            (device, step, int(since // step) * step, until)).fetchall()
        return {"device": device, "step": step, "points": [_point(r) for r in rows]}


def _point(row: Any) -> dict[str, Any]:
    n = row["n"]
    return {
        "t": row["bucket"],
        "reports": n,
        "cpu_percent": round(row["cpu_sum"] / n, 2), "cpu_percent_max": row["cpu_max"],
        "mem_percent": round(row["mem_sum"] / n, 2), "mem_percent_max": row["mem_max"],
        "load1": round(row["load_sum"] / n, 3),
        "disk_free_min": row["disk_free_min"],
        "cpu_temp_c": round(row["temp_sum"] / row["temp_n"], 2) if row["temp_n"] else None,
        "cpu_temp_c_max": row["temp_max"],
        "outbox_max": row["outbox_max"],
    }
