"""Recurring reception: "every Thursday 08:00, chaired by the commune chairman".

The law organises regular reception days, so a schedule is a recurrence rule (RFC 5545, via
python-dateutil's rrule) in the province's time zone plus a host and the points to invite.
The next occurrence always exists as a `scheduled` session, so it shows in `session list` and
can be ended (skipped) like any other; once it starts, the one after it is created.

`every` accepts `THU 08:00`, `MON,THU 14:30`, `DAILY 08:00`, or an RRULE such as
`FREQ=MONTHLY;BYDAY=1MO;BYHOUR=8;BYMINUTE=0`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule

from tiepdan.controller.sessions.engine import Sessions
from tiepdan.errors import BadInput, NotFound, TiepdanError
from tiepdan.firmware import protocol

if TYPE_CHECKING:
    from tiepdan.controller.store import Database

log = logging.getLogger(__name__)

# Its tables are created and changed only by controller/migrations/controller_db.py.

DAYS = {"MON": rrule.MO, "TUE": rrule.TU, "WED": rrule.WE, "THU": rrule.TH, "FRI": rrule.FR,
        "SAT": rrule.SA, "SUN": rrule.SU}
_SIMPLE = re.compile(r"^\s*(?P<days>DAILY|[A-Z]{3}(?:\s*,\s*[A-Z]{3})*)\s+"
                     r"(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)\s*\Z", re.I)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"unknown time zone {name!r}") from None


def recurrence(every: str, tz: ZoneInfo, start: dt.datetime) -> rrule.rrule:
    """The rule for `every`, starting at `start` (aware, in `tz`)."""
    simple = _SIMPLE.match(every)
    if simple:
        days = simple["days"].upper()
        weekdays = None if days == "DAILY" else [
            DAYS[d.strip()] for d in days.split(",") if d.strip() in DAYS]
        if weekdays is not None and len(weekdays) != len(days.split(",")):
            raise BadInput(f"unknown day in {every!r}; use "
                               f"{', '.join(DAYS)} or DAILY")
        return rrule.rrule(rrule.DAILY if weekdays is None else rrule.WEEKLY,
                           byweekday=weekdays, byhour=int(simple["hour"]),
                           byminute=int(simple["minute"]), bysecond=0,
                           dtstart=start.replace(microsecond=0))
    text = every.strip().removeprefix("RRULE:")
    if text.upper().startswith("FREQ="):
        try:
            rule = rrule.rrulestr(text, dtstart=start.replace(microsecond=0))
        except (ValueError, TypeError) as exc:
            raise BadInput(f"invalid RRULE {every!r}: {exc}") from None
        if not isinstance(rule, rrule.rrule):
            raise BadInput(f"one RRULE expected, got {every!r}")
        return rule
    raise BadInput(f"cannot read schedule {every!r}: use e.g. 'THU 08:00', "
                                      "'MON,THU 14:30', 'DAILY 08:00' or an RRULE")


def next_time(every: str, timezone: str, after: float) -> float | None:
    """Epoch seconds of the first occurrence strictly after `after`."""
    tz = zone(timezone)
    start = dt.datetime.fromtimestamp(after, tz)
    following = recurrence(every, tz, start).after(start, inc=False)
    return None if following is None else following.timestamp()


def parse_at(text: str, timezone: str) -> float:
    """An ISO 8601 time; without an offset it is read in the province's time zone."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(timezone))
    return moment.timestamp()


@dataclass
class Schedule:
    id: str
    every: str
    timezone: str
    host: str
    invite: list[str]
    title: str
    auto_join: bool
    created: float
    active: bool
    next_session: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Schedules:
    def __init__(self, db: Database, timezone: str, sessions: Sessions) -> None:
        self._db = db
        self._timezone = timezone
        self._sessions = sessions
        zone(self._timezone)

    def all(self) -> list[Schedule]:
        rows = self._db.conn.execute("SELECT * FROM schedules ORDER BY created")
        return [_schedule(r) for r in rows]

    def get(self, schedule_id: str) -> Schedule | None:
        row = self._db.conn.execute("SELECT * FROM schedules WHERE id = ?",
                                    (schedule_id,)).fetchone()
        return None if row is None else _schedule(row)

    async def add(self, every: str, host: str, invite: list[str], *, title: str = "",
                  auto_join: bool = False) -> Schedule:
        first = next_time(every, self._timezone, time.time())
        if first is None:
            raise BadInput(f"{every!r} has no future occurrence")
        schedule_id = f"r-{protocol.new_id()[:12]}"
        self._db.conn.execute(
            "INSERT INTO schedules (id, every, timezone, host, invite, title, auto_join, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (schedule_id, every, self._timezone, host, json.dumps(invite), title,
             int(auto_join), time.time()))
        try:
            await self._open_next(schedule_id, first)
        except TiepdanError:
            self._db.conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
            raise
        log.info("schedule_added schedule=%s every=%r timezone=%s host=%s", schedule_id, every,
                 self._timezone, host)
        schedule = self.get(schedule_id)
        assert schedule is not None
        return schedule

    async def cancel(self, schedule_id: str) -> Schedule:
        schedule = self.get(schedule_id)
        if schedule is None:
            raise NotFound(f"no schedule {schedule_id!r}")
        self._db.conn.execute("UPDATE schedules SET active = 0 WHERE id = ?", (schedule_id,))
        pending = self._sessions.get(schedule.next_session or "")
        if pending is not None and pending.state == "scheduled":
            await self._sessions.end(pending.id, "cancelled")
        log.info("schedule_cancelled schedule=%s", schedule_id)
        cancelled = self.get(schedule_id)
        assert cancelled is not None
        return cancelled

    async def _open_next(self, schedule_id: str, at: float) -> None:
        schedule = self.get(schedule_id)
        assert schedule is not None
        session = await self._sessions.open(schedule.host, schedule.invite,
                                            title=schedule.title, at=at,
                                            auto_join=schedule.auto_join, schedule=schedule_id)
        self._db.conn.execute("UPDATE schedules SET next_session = ? WHERE id = ?",
                              (session.id, schedule_id))

    async def tick(self) -> None:
        """Once an occurrence has started (or was skipped), create the next one."""
        for schedule in self.all():
            if not schedule.active:
                continue
            pending = self._sessions.get(schedule.next_session or "")
            if pending is not None and pending.state == "scheduled":
                continue
            after = max(time.time(), pending.starts_at or 0.0) if pending else time.time()
            following = next_time(schedule.every, schedule.timezone, after)
            if following is None:
                self._db.conn.execute("UPDATE schedules SET active = 0 WHERE id = ?",
                                      (schedule.id,))
                continue
            try:
                await self._open_next(schedule.id, following)
            except TiepdanError as exc:
                log.error("schedule_open_failed schedule=%s error=%s", schedule.id, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            try:
                await self.tick()
            except Exception:
                log.exception("schedules_tick_failed")


def _schedule(row: Any) -> Schedule:
    values = dict(row)
    values["invite"] = json.loads(values["invite"])
    values["auto_join"] = bool(values["auto_join"])
    values["active"] = bool(values["active"])
    return Schedule(**values)
