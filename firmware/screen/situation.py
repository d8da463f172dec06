"""What the hall should see now, read from the agent: the one place that ranks the box's states.

Updating and not enrolled come first (nothing else can happen), then the call (invited,
joining, in call), then the after-call upload, then the link and the disk, then idle. The
presenter asks every tick; what takes I/O (upload progress, the certificate) is looked at only
every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from tiepdan.firmware import protocol
from tiepdan.firmware.agent.config import ScreenSection
from tiepdan.firmware.screen.progress import upload_percent
from tiepdan.firmware.screen.state import Fault, NextSession, Quality, ScreenState

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent

__all__ = ["Situation", "quality"]

PROGRESS_EVERY_S = 2.0
CERTIFICATE_EVERY_S = 5.0
AFTER_MAX_S = 600.0  # an upload that takes longer goes on under the idle screen
UPDATING = ("installing", "restarting")
SESSION_SHOWN_AFTER_START_MS = 15 * 60_000  # a late start still shows its session a while


def quality(qos: protocol.CallQos | None) -> Quality:
    """Three bars from what the call measured: loss and round trip, as a hall would feel them."""
    if qos is None or (qos.loss_received is None and qos.rtt_ms is None):
        return "unknown"
    loss = qos.loss_received or 0.0
    rtt = qos.rtt_ms or 0.0
    if loss < 0.02 and rtt < 300:
        return "good"
    if loss < 0.08 and rtt < 800:
        return "fair"
    return "poor"


class Situation:
    def __init__(self, agent: Agent, config: ScreenSection, zone: ZoneInfo) -> None:
        self.agent = agent
        self.config = config
        self.zone = zone
        self.remote = protocol.RemoteConfig()  # the controller's desired settings, as applied
        self._offline_at: float | None = time.monotonic()  # offline until the first connect
        self._offline_wall: datetime | None = datetime.now(zone).replace(microsecond=0)
        self._left: tuple[str, float] | None = None  # session, monotonic time the box left
        self._progress: tuple[int | None, float] = (None, 0.0)
        self._saved_at: float | None = None
        self._enrolled_at = 0.0
        self._enrolled = True

    def call_left(self, session: str) -> None:
        """Connected to the call's `on_left` by the agent's composition root."""
        self._left = (session, time.monotonic())
        self._saved_at = None
        self._progress = (None, 0.0)

    def not_enrolled(self) -> bool:
        """No certificate (looked at every few seconds, not on every tick)."""
        mqtt = self.agent.config.mqtt
        if not mqtt.tls:
            return False
        now = time.monotonic()
        if now - self._enrolled_at > CERTIFICATE_EVERY_S:
            self._enrolled_at = now
            self._enrolled = self.agent.config.tls_file(mqtt.cert_file, "device.pem").is_file()
        return not self._enrolled

    async def read(self, *, in_picture: bool) -> ScreenState:
        """The screen for now; `in_picture`: the call's picture is already on screen (so a
        reconnect keeps it, with a badge, rather than going back to "connecting")."""
        agent, call = self.agent, self.agent.call
        now = datetime.now(self.zone).replace(second=0, microsecond=0)
        online = agent.link.connected
        mono = time.monotonic()
        if online:
            self._offline_at = self._offline_wall = None
        elif self._offline_at is None:
            self._offline_at, self._offline_wall = mono, now
        device = agent.config.device
        base = ScreenState(kind="idle", hall=device.name, commune=device.commune,
                           device=agent.device, now=now, online=online,
                           next_session=self._next_session())
        invite = call.invite
        inviter = invite.host_name if invite else ""
        title = invite.title if invite else ""
        percent = await self._upload_percent(mono)
        fault: Fault | None = None
        latest = agent.telemetry.latest
        free_mb = None if latest is None else latest.disk_free_bytes // (1024 * 1024)
        if agent.ota.step in UPDATING:
            fault = "updating"
        elif self.not_enrolled():
            fault = "not_enrolled"
        if fault is not None:
            return replace(base, kind="fault", fault=fault)
        if call.state == "invited":
            return replace(base, kind="invited", inviter=inviter, title=title)
        if call.state == "joining" or (call.state == "reconnecting" and not in_picture):
            return replace(base, kind="joining", inviter=inviter,
                           reconnecting=call.state == "reconnecting")
        if call.state in ("live", "reconnecting"):
            return replace(base, kind="call", muted=call.muted,
                           recording=agent.recording.recording,
                           reconnecting=call.state == "reconnecting", quality=quality(call.qos))
        if self._left is not None and self._after(mono, percent):
            return replace(base, kind="after", upload_percent=percent)
        if not online and self._offline_at is not None \
                and mono - self._offline_at >= self.config.offline_after:
            return replace(base, kind="fault", fault="unreachable",
                           offline_since=self._offline_wall)
        if free_mb is not None and free_mb < self.config.disk_low_mb:
            return replace(base, kind="fault", fault="disk_low", free_mb=free_mb)
        return replace(base, upload_percent=percent)

    def _next_session(self) -> NextSession | None:
        upcoming = self.remote.next_session
        if upcoming is None or upcoming.at <= protocol.now_ms() - SESSION_SHOWN_AFTER_START_MS:
            return None
        return NextSession(at=datetime.fromtimestamp(upcoming.at / 1000, self.zone),
                           title=upcoming.title, host_name=upcoming.host_name)

    def _after(self, mono: float, percent: int | None) -> bool:
        """Whether the after-call screen still shows: while uploading, then `after_seconds`."""
        assert self._left is not None
        since = mono - self._left[1]
        if since > AFTER_MAX_S:
            return False
        if percent is None or percent >= 100:
            if self._saved_at is None:
                self._saved_at = mono
            return mono - self._saved_at < self.config.after_seconds
        return True

    async def _upload_percent(self, mono: float) -> int | None:
        if self._left is None:
            return None
        value, at = self._progress
        if mono - at >= PROGRESS_EVERY_S:
            directory: Path = self.agent.config.recording_dir / self._left[0]
            value = await asyncio.to_thread(upload_percent, directory)
            self._progress = (value, mono)
        return value
