"""Closing ended sessions: `ended` -> `closed` once the archive holds every recording whole.

Boxes may still be uploading long after a session ends (a hall offline for a day), so an ended
session is retried every `[archive] close_interval` seconds until the archive closes it. Each
time the reasons it cannot close change, they go into the session's log (`close_pending`), so
`tiepdan-controller session show` says why a session is still only `ended`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from tiepdan.controller.archive.closed import ClosedSession, Problems
from tiepdan.errors import NotFound

if TYPE_CHECKING:
    from tiepdan.controller.archive.store import Archive
    from tiepdan.controller.sessions.engine import Sessions

log = logging.getLogger(__name__)


class Closer:
    """Closes ended sessions once the archive holds every recording; `on_session` wakes it."""

    def __init__(self, sessions: Sessions, archive: Archive, closed_by: str,
                 interval: float) -> None:
        self._sessions = sessions
        self._archive = archive
        self._closed_by = closed_by
        self._interval = interval
        self.problems: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def on_session(self, session: object, old: str | None, new: str) -> None:
        if new == "ended":
            self._wake.set()

    async def run(self) -> None:
        while True:
            for session in self._sessions.find("ended", limit=1000):
                try:
                    await self.close(session.id, self._closed_by)
                except Exception:
                    log.exception("session_close_failed session=%s", session.id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()

    async def close(self, session_id: str, closed_by: str) -> ClosedSession | Problems:
        """Try once; the session moves to `closed` when the archive closes it."""
        sessions = self._sessions
        archive = self._archive
        async with self._lock:
            session = sessions.get(session_id)
            if session is None:
                raise NotFound(f"no session {session_id!r}")
            if session.state == "closed":
                done = archive.closed(session_id)
                if done is not None:
                    return done
            elif session.state != "ended":
                return Problems(session_id, [f"session is {session.state}, not ended"])
            devices = [p.device for p in sessions.points(session_id) if p.joined_at is not None]
            result = await asyncio.to_thread(archive.try_close, session_id, devices, closed_by)
            if isinstance(result, ClosedSession):
                self.problems.pop(session_id, None)
                if session.state != "closed":
                    sessions.note(session_id, None, "archived",
                                  f"closed by {closed_by}: {len(result.recordings)} "
                                  "recordings complete")
                    sessions.set_state(session_id, "closed")
                return result
            if result.items != self.problems.get(session_id):
                self.problems[session_id] = result.items
                sessions.note(session_id, None, "close_pending", str(result))
                log.info("session_close_pending session=%s problems=%s", session_id, result)
            return result
