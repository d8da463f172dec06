"""Tells each box the next scheduled session it takes part in, for the hall's idle screen.

A box learns of a session only when it is invited, minutes before it starts; a hall wants to
see days ahead that the province receives citizens on Thursday at 08:00. So whenever sessions
change (and every `INTERVAL_S`, for sessions that start and leave the schedule) the controller
writes `next_session` (time, title, host's name) into each concerned box's desired state,
keeping the rest of that box's desired configuration as it is, and clears it when nothing is
scheduled. Boxes apply it like any desired setting, also after being offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from tiepdan.controller.sessions.engine import Session, Sessions
from tiepdan.firmware import protocol

if TYPE_CHECKING:
    from tiepdan.controller.fleet.registry import Registry

SetDesired = Callable[[str, protocol.RemoteConfig], Awaitable[object]]

__all__ = ["NextSessions"]

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


class NextSessions:
    """Tells each box its next scheduled session through desired state; `on_session` is
    connected to the sessions by the composition root."""

    def __init__(self, registry: Registry, sessions: Sessions, set_desired: SetDesired) -> None:
        self._registry = registry
        self._sessions = sessions
        self._set_desired = set_desired
        self._changed = asyncio.Event()

    def on_session(self, session: Session, old: str | None, new: str) -> None:
        self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()  # before reading, so a change meanwhile is not lost
            try:
                await self.announce()
            except Exception:  # the next change or tick tries again
                log.exception("next_sessions_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL_S):
                    await self._changed.wait()

    def upcoming(self) -> dict[str, protocol.NextSession]:
        """Device -> the earliest scheduled session it hosts or is invited to."""
        registry = self._registry
        now = time.time()
        found: dict[str, tuple[float, protocol.NextSession]] = {}
        for session in self._sessions.find("scheduled", limit=1000):
            if session.starts_at is None or session.starts_at <= now:
                continue
            host = registry.get(session.host)
            entry = protocol.NextSession(at=int(session.starts_at * 1000),
                                         title=session.title[:200],
                                         host_name=(host.name if host and host.name
                                                    else session.host)[:200])
            for point in self._sessions.points(session.id):
                if point.device not in found or session.starts_at < found[point.device][0]:
                    found[point.device] = (session.starts_at, entry)
        return {device: entry for device, (_, entry) in found.items()}

    async def announce(self) -> int:
        """Write `next_session` where it changed; returns how many boxes were told."""
        registry = self._registry
        wanted = self.upcoming()
        told = 0
        for device in registry.devices():
            current = _config(device.desired)
            want = wanted.get(device.id)
            if current.next_session == want:
                continue
            await self._set_desired(
                device.id, msgspec.structs.replace(current, next_session=want))
            log.info("next_session_announced device=%s at=%s", device.id,
                     None if want is None else want.at)
            told += 1
        return told


def _config(desired: dict[str, object] | None) -> protocol.RemoteConfig:
    if not desired:
        return protocol.RemoteConfig()
    try:
        return msgspec.convert(desired.get("config", {}), protocol.RemoteConfig)
    except msgspec.ValidationError:
        return protocol.RemoteConfig()
