"""Health history: reports folded into two tiers of fixed buckets, bounded by time, queryable
through the admin API; a box's own telemetry over the real broker ends up in it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    eventually,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.config import HistorySection
from tiepdan.controller.connection import driver_errors
from tiepdan.controller.history.history import History
from tiepdan.controller.store import Database
from tiepdan.errors import BadInput
from tiepdan.tools.broker import Mosquitto

T0 = 1_800_000_000.0  # a bucket boundary for both 10 s and 300 s


def health(cpu: float, free: int = 50, temp: float | None = 50.0, outbox: int = 0
           ) -> dict[str, Any]:
    h: dict[str, Any] = {"ts": 0, "uptime_s": 1.0, "cpu_percent": cpu, "mem_percent": cpu / 2,
                         "disk_free_bytes": free, "disk_total_bytes": 100, "load1": cpu / 100,
                         "outbox": outbox}
    if temp is not None:
        h["cpu_temp_c"] = temp
    return h


@pytest.fixture
def history(database: Path | str) -> Iterator[History]:
    db = Database(database)
    yield History(db, HistorySection())
    db.close()


def test_reports_fold_exactly_into_both_tiers(history: History) -> None:
    history.add("xa-a", health(10, free=40, temp=None), at=T0 + 1)
    history.add("xa-a", health(30, free=20, temp=60, outbox=5), at=T0 + 9)
    history.flush()  # a flush between reports of one bucket merges, it does not overwrite
    history.add("xa-a", health(20, free=30, temp=70), at=T0 + 12)
    fine = history.query("xa-a", T0, T0 + 60, step=10, at=T0 + 60)["points"]
    assert [p["t"] for p in fine] == [T0, T0 + 10]
    assert fine[0]["reports"] == 2 and fine[0]["cpu_percent"] == 20.0
    assert fine[0]["cpu_percent_max"] == 30 and fine[0]["disk_free_min"] == 0.2
    assert fine[0]["cpu_temp_c"] == 60.0 and fine[0]["outbox_max"] == 5
    coarse = history.query("xa-a", T0, T0 + 600, step=300, at=T0 + 60)["points"]
    assert len(coarse) == 1 and coarse[0]["reports"] == 3
    assert coarse[0]["cpu_percent"] == 20.0 and coarse[0]["cpu_temp_c_max"] == 70


def test_the_window_picks_the_tier(history: History) -> None:
    history.add("xa-a", health(10), at=T0)
    now = T0 + 3600
    assert history.query("xa-a", now - 3600, now, at=now)["step"] == 10
    assert history.query("xa-a", now - 2 * 86400, now, at=now)["step"] == 300
    with pytest.raises(BadInput, match="narrow"):
        history.query("xa-a", now - 30 * 86400, now, step=10, at=now)
    assert history.query("xa-a", now - 90 * 86400, now, at=now)["step"] == 300  # all it keeps
    with pytest.raises(BadInput, match="step"):
        history.query("xa-a", now - 60, now, step=7, at=now)
    with pytest.raises(BadInput, match="before"):
        history.query("xa-a", now, now - 60, at=now)


def test_size_is_bounded_by_time(history: History) -> None:
    """Two days of a report every 10 s: the fine tier keeps one day, the coarse one all."""
    day = 86400
    for i in range(0, 2 * day, 10):
        history.add("xa-a", health(i % 100), at=T0 + i)
        if i % 3600 == 0:
            history.flush()
    history.flush()
    removed = history.prune(at=T0 + 2 * day)
    assert removed == day // 10
    counts = dict(history._db.conn.execute(
        "SELECT step, count(*) FROM device_health GROUP BY step").fetchall())
    assert counts == {10: day // 10, 300: 2 * day // 300}
    history.prune(at=T0 + 2 * day + 91 * day)
    assert history._db.conn.execute("SELECT count(*) FROM device_health").fetchone()[0] == 0


def fail_writes(db: Database) -> Callable[[], object]:
    """Fault injection: every insert into the history fails as a full disk would, until healed."""
    conn = db.conn
    if db.dialect == "sqlite":
        conn.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON device_health "
                     "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        return lambda: conn.execute("DROP TRIGGER fail")
    conn.execute("CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; END $$")
    conn.execute("CREATE TRIGGER fail BEFORE INSERT ON device_health "
                  "FOR EACH ROW EXECUTE FUNCTION fail()")
    return lambda: conn.execute("DROP TRIGGER fail ON device_health")


def test_a_failed_write_keeps_the_reports_for_the_next_round(history: History) -> None:
    history.add("xa-a", health(10), at=T0)
    heal = fail_writes(history._db)
    with pytest.raises(driver_errors(), match="disk full"):
        history.flush()
    history.add("xa-a", health(30), at=T0 + 1)
    heal()
    point = history.query("xa-a", T0, T0 + 10, step=10, at=T0 + 10)["points"][0]
    assert point["reports"] == 2 and point["cpu_percent"] == 20.0


async def test_a_box_telemetry_reaches_the_history_api(tmp_path: Path,
                                                       broker: Mosquitto) -> None:
    config = make_controller_config(tmp_path, broker,
                                    history={"fine_step": 1, "coarse_step": 2,
                                             "flush_interval": 0.2})
    async with running_controller(config) as controller, \
            running_agent(make_agent_config(tmp_path, broker, "xa-hist")):
        client = ApiClient.from_config(controller.config)
        await eventually(lambda: controller.registry.get("xa-hist"), timeout=30,
                         what="xa-hist's birth")

        async def points() -> list[dict[str, Any]]:
            answer = await asyncio.to_thread(client.get, "/api/devices/xa-hist/history")
            assert answer["step"] == 1
            return list(answer["points"])
        found = await eventually(points, timeout=30, what="history points of xa-hist")
        assert found[0]["reports"] >= 1 and 0 <= found[0]["cpu_percent"] <= 6400
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(client.get, "/api/devices/xa-hist/history", since="soon")
        assert refused.value.status == 400
        with pytest.raises(ApiError) as missing:
            await asyncio.to_thread(client.get, "/api/devices/nobody/history")
        assert missing.value.status == 404
