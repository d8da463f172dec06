"""A real-time clock for simulated sources that must produce frames at a fixed rate."""

from __future__ import annotations

import asyncio
import math


class Pacer:
    """Hands out tick numbers at `rate` per second on the event loop's monotonic clock.

    A consumer that falls behind skips the missed ticks instead of bursting through them:
    live media should drop frames, not build up latency. Tick numbers therefore stay tied
    to real time, so a caller can derive timestamps from them.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._start: float | None = None
        self._tick = 0

    async def tick(self) -> int:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
            return 0
        self._tick += 1
        due = self._start + self._tick / self.rate
        if now - due > 1 / self.rate:
            self._tick = math.floor((now - self._start) * self.rate)
        elif due > now:
            await asyncio.sleep(due - now)
        return self._tick
