"""Simulated boxes for campaign tests and the OTA benchmark: many agents in one process, each
with its own real A/B root (slots, `current`, boot state) on disk.

What is real: the MQTT link, the job protocol, TUF metadata and bundle checks over HTTP, the
install into the spare slot, the switch, the trial, the health check, commit and rollback.
What is not: a restart re-creates the `Agent` object in this process instead of executing the
new slot's code (the subprocess tests in tests/ota do that), so the new version's code is this
process's code with the slot's version number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from tiepdan.board.profile import BoardProfile
from tiepdan.firmware.agent.agent import Agent, Exit, FrontPanel, HealthSource
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.update import boot
from tiepdan.firmware.update.slots import Slot

log = logging.getLogger(__name__)


class SimBox:
    def __init__(self, config: AgentConfig, profile: BoardProfile,
                 panel: Callable[[], FrontPanel], sensors: HealthSource | None = None) -> None:
        self.config = config
        self.profile = profile
        self.panel = panel
        self.sensors = sensors
        self.root = Path(config.ota.root)
        self.agent: Agent | None = None
        self.starts = 0
        self._stopping = False
        self._started = asyncio.Event()

    @property
    def slot(self) -> str | None:
        return boot.current_slot(self.root)

    @property
    def version(self) -> str | None:
        slot = self.slot
        return boot.slot_version(self.root, slot) if slot else None

    async def run(self) -> None:
        """Run the box; a requested restart starts a new agent on whatever `current` is."""
        while not self._stopping:
            agent = Agent(self.config, profile=self.profile, panel=self.panel(),
                          sensors=self.sensors)
            slot = boot.current_slot(self.root)
            if slot is not None:
                agent.ota.assume_slot(Slot(self.root, slot))
            self.agent = agent
            self.starts += 1
            self._started.set()
            outcome = await agent.run()
            if outcome != Exit.RESTART:
                break

    async def wait_started(self, timeout: float = 10.0) -> Agent:
        async with asyncio.timeout(timeout):
            await self._started.wait()
        assert self.agent is not None
        await self.agent.link.wait_connected(timeout)
        return self.agent

    def stop(self) -> None:
        self._stopping = True
        if self.agent is not None:
            self.agent.request_stop()


async def stop_all(boxes: list[SimBox], tasks: list[asyncio.Task[None]]) -> None:
    for box in boxes:
        box.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
