"""Recurring reception days: rules in the province's time zone, and the next occurrence."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from tiepdan.controller.sessions.schedule import next_time, parse_at
from tiepdan.errors import BadInput

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def at(*args: int) -> float:
    return dt.datetime(*args, tzinfo=HCM).timestamp()


def local(epoch: float | None) -> dt.datetime:
    assert epoch is not None
    return dt.datetime.fromtimestamp(epoch, HCM)


def test_every_thursday_at_eight_in_province_time() -> None:
    # Wednesday 2025-07-02 10:00 in Vietnam: the next one is Thursday 2025-07-03 08:00 (+07).
    following = local(next_time("THU 08:00", "Asia/Ho_Chi_Minh", at(2025, 7, 2, 10, 0)))
    assert following == dt.datetime(2025, 7, 3, 8, 0, tzinfo=HCM)
    assert following.utcoffset() == dt.timedelta(hours=7)
    # Thursday 08:00 itself is taken: the next is a week later.
    assert local(next_time("THU 08:00", "Asia/Ho_Chi_Minh", at(2025, 7, 3, 8, 0))) == \
        dt.datetime(2025, 7, 10, 8, 0, tzinfo=HCM)


def test_several_days_daily_and_rrule() -> None:
    start = at(2025, 7, 3, 9, 0)  # a Thursday
    assert local(next_time("mon, thu 14:30", "Asia/Ho_Chi_Minh", start)) == \
        dt.datetime(2025, 7, 3, 14, 30, tzinfo=HCM)
    assert local(next_time("DAILY 07:00", "Asia/Ho_Chi_Minh", start)) == \
        dt.datetime(2025, 7, 4, 7, 0, tzinfo=HCM)
    # First Monday of the month (1 July 2025 is a Tuesday).
    assert local(next_time("FREQ=MONTHLY;BYDAY=1MO;BYHOUR=8;BYMINUTE=0;BYSECOND=0",
                           "Asia/Ho_Chi_Minh", start)) == dt.datetime(2025, 7, 7, 8, 0,
                                                                      tzinfo=HCM)


@pytest.mark.parametrize("every", ["THURSDAY 8", "XYZ 08:00", "THU 25:00", "FREQ=NEVER", ""])
def test_unreadable_schedules_are_clear_errors(every: str) -> None:
    with pytest.raises(BadInput) as caught:
        next_time(every, "Asia/Ho_Chi_Minh", at(2025, 7, 3, 9, 0))
    assert caught.value.code == "bad_request"


def test_unknown_time_zone_and_bad_times() -> None:
    with pytest.raises(BadInput, match="time zone"):
        next_time("THU 08:00", "Mars/Olympus", 0)
    with pytest.raises(BadInput, match="ISO 8601"):
        parse_at("next thursday", "Asia/Ho_Chi_Minh")
    # Without an offset a time is read in the province's zone.
    assert parse_at("2025-07-03T08:00", "Asia/Ho_Chi_Minh") == at(2025, 7, 3, 8, 0)
    assert parse_at("2025-07-03T01:00+00:00", "Asia/Ho_Chi_Minh") == at(2025, 7, 3, 8, 0)
