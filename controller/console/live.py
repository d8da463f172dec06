"""Live updates for every open console page, over Server-Sent Events.

Changes are coalesced: a box sending health every second marks itself dirty, and twice a second
the hub sends every dirty box a viewer may see in one `devices` event (a JSON list of rows).
A viewer too slow to keep up loses its oldest batches (a bounded queue), never the
controller's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiepdan.controller.fleet.registry import Device
from tiepdan.controller.people.caller import Caller

log = logging.getLogger(__name__)

QUEUE = 512


@dataclass(eq=False)
class Viewer:
    caller: Caller
    topics: frozenset[str]
    queue: asyncio.Queue[tuple[str, str]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: int = 0

    def put(self, event: str, data: str) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait((event, data))


class LiveHub:
    def __init__(self, row: Callable[[Device], dict[str, Any]],
                 when: Callable[[float], str], interval: float = 0.5) -> None:
        self._row = row
        self._when = when
        self.interval = interval
        self.viewers: set[Viewer] = set()
        self._dirty: dict[str, Device] = {}
        self._changed: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.sent = 0

    # -- sources ---------------------------------------------------------------------------------

    def on_device(self, device: Device, what: str) -> None:
        """Registry listener."""
        if what != "event":
            self._dirty[device.id] = device
        if what == "update":  # a box reported update progress: its campaign's pages change
            campaign = (device.extra.get("update") or {}).get("campaign")
            self.changed("updates", *([f"campaign:{campaign}"] if campaign else []))

    def changed(self, *topics: str) -> None:
        """Page regions on `topics` ("sessions", "session:<id>", "updates") are out of date."""
        self._changed.update(topics)

    # -- viewers ---------------------------------------------------------------------------------

    def join(self, caller: Caller, topics: frozenset[str]) -> Viewer:
        viewer = Viewer(caller, topics)
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def flush(self) -> None:
        """Send what changed since the last flush."""
        dirty, self._dirty = self._dirty, {}
        changed, self._changed = self._changed, set()
        if not self.viewers or (not dirty and not changed):
            return
        rows: list[tuple[str, dict[str, Any]]] = []
        for device in dirty.values():
            row = self._row(device)
            row["last_seen_text"] = self._when(device.last_seen)
            rows.append((device.province, row))
        # One event per viewer per flush, encoded once per province scope: a burst of a
        # thousand boxes is one message to each viewer, not a thousand.
        encoded: dict[str | None, str] = {}

        def batch(scope: str | None) -> str:
            if scope not in encoded:
                encoded[scope] = json.dumps([r for p, r in rows if scope is None or p == scope],
                                            separators=(",", ":"))
            return encoded[scope]

        for viewer in self.viewers:
            if "fleet" in viewer.topics and rows:
                scope = viewer.caller.province if viewer.caller.role == "operator" else None
                data = batch(scope)
                if data != "[]":
                    viewer.put("devices", data)
                    self.sent += 1
            for topic in changed & viewer.topics:
                viewer.put("changed", json.dumps({"topic": topic}))
                self.sent += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.flush()
            except Exception:
                log.exception("live_flush_failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="console-live")

    async def close(self) -> None:
        self.closed.set()
        for viewer in self.viewers:
            viewer.put("close", "{}")  # wakes its stream, which then ends
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
