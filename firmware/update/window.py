"""Maintenance windows: "HH:MM-HH:MM" in the box's local time, possibly across midnight."""

from __future__ import annotations

from datetime import datetime, time


def parse(window: str) -> tuple[time, time]:
    start, _, end = window.partition("-")
    try:
        return time.fromisoformat(start), time.fromisoformat(end)
    except ValueError:
        raise ValueError(f"not a window HH:MM-HH:MM: {window!r}") from None


def inside(window: str | None, now: datetime | None = None) -> bool:
    """True when `now` falls in `window`; no window means any time. Equal ends mean all day."""
    if not window:
        return True
    start, end = parse(window)
    moment = (now or datetime.now()).time()
    if start == end:
        return True
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end
