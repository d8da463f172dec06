"""What the screen shows, as plain data: the presenter builds it, the layouts draw it.

Keeping this apart from the agent lets the layouts be drawn (and snapshotted) from any state,
and makes "did anything change?" one comparison, so an unchanged screen is never redrawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["Fault", "Kind", "NextSession", "Quality", "ScreenState"]

Kind = Literal["idle", "invited", "joining", "call", "after", "fault"]
Fault = Literal["not_enrolled", "unreachable", "disk_low", "updating"]
Quality = Literal["good", "fair", "poor", "unknown"]


@dataclass(frozen=True)
class NextSession:
    """The next reception session this hall takes part in, as the controller announced it."""

    at: datetime
    title: str = ""
    host_name: str = ""


@dataclass(frozen=True)
class ScreenState:
    kind: Kind
    hall: str
    commune: str
    device: str
    now: datetime  # local time, to the minute (the screen redraws when it changes)
    online: bool = True
    next_session: NextSession | None = None
    inviter: str = ""
    title: str = ""
    muted: bool = False
    recording: bool = False
    reconnecting: bool = False
    quality: Quality = "unknown"
    upload_percent: int | None = None  # None: nothing to upload; 100: all saved
    fault: Fault | None = None
    free_mb: int | None = None
    offline_since: datetime | None = None
