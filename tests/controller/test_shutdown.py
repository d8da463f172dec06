"""A controller stops even when a feature loop is woken in the very moment it is cancelled.

CI once hung 15 s closing a controller: a cancelled schedule ended its session, which woke the
closer just as shutdown cancelled it, and Python 3.11's `asyncio.wait_for` returned the wake-up
instead of raising, so the loop went round again and never ended. These tests make that race
happen on purpose for every loop that sleeps on an Event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support import make_controller_config
from tiepdan.controller.service import Controller
from tiepdan.tools.broker import Mosquitto

Wake = Callable[[Controller], None]
LOOPS: dict[str, tuple[Callable[[Controller], Awaitable[None]], Wake]] = {
    "closer": (lambda c: c.closer.run(),
               lambda c: c.closer.on_session(None, "live", "ended")),
    "next-sessions": (lambda c: c.next_sessions.run(),
                      lambda c: c.next_sessions._changed.set()),
    "campaigns": (lambda c: c.campaigns.run(), lambda c: c.campaigns._wake.set()),
}


@pytest.mark.parametrize("name", sorted(LOOPS))
async def test_a_loop_woken_as_it_is_cancelled_still_stops(tmp_path: Path, broker: Mosquitto,
                                                           name: str) -> None:
    controller = Controller(make_controller_config(tmp_path, broker))
    run, wake = LOOPS[name]
    try:
        task = asyncio.ensure_future(run(controller))
        for _ in range(20):  # let it reach its wait
            await asyncio.sleep(0)
        assert not task.done()
        wake(controller)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    finally:
        await controller.close()
