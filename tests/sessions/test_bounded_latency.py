"""Under CPU shortage the picture arrives less often, never later: frames are dropped (newest
wins), not queued, on the bridge and on the box.

The controller (bridge) and the boxes run in this process; a cgroup caps the whole process to a
fraction of one core for a while. Latency is read as the session tests and the benchmark read
it: the capture time burned into each point's synthetic picture, against the receiver's clock.
The bound is generous (this machine is shared), not a benchmark figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sessions.points import BRIDGE, points
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.board.camera.tag import read_tag
from tiepdan.firmware.agent.agent import Agent
from tiepdan.tools.broker import Mosquitto

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
DEVICES = ["bl-host", "bl-1", "bl-2"]
LATENCY_BOUND_MS = 3000  # generous (a shared machine): unbounded queues reached 9-11 s here
# Of one core, for controller and boxes together, loosest first: the first cap that makes the
# frame rate fall is the one judged (0.4 bit too hard on one machine, 0.5 not at all on another).
STARVED_SHARES = (0.55, 0.45, 0.35, 0.25)


def _cgroup_usable() -> bool:
    return os.geteuid() == 0 and (CPU_CGROUP / "cpu.cfs_quota_us").exists()


pytestmark = pytest.mark.skipif(not _cgroup_usable(),
                                reason="needs root and the cgroup v1 cpu controller")


@contextlib.contextmanager
def cpu_cgroup() -> Iterator[Path]:
    group = CPU_CGROUP / f"jan-starve-{os.getpid()}"
    group.mkdir(exist_ok=True)
    try:
        yield group
    finally:
        (CPU_CGROUP / "cgroup.procs").write_text(str(os.getpid()))
        with contextlib.suppress(OSError):
            group.rmdir()


@contextlib.contextmanager
def starved(group: Path, share: float) -> Iterator[None]:
    """Cap this process (every thread) at `share` of one core."""
    period = int((group / "cpu.cfs_period_us").read_text())
    (group / "cpu.cfs_quota_us").write_text(str(int(period * share)))
    (group / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (CPU_CGROUP / "cgroup.procs").write_text(str(os.getpid()))
        (group / "cpu.cfs_quota_us").write_text("-1")


class Probe:
    """What one point receives: arrival times, and the age of each new picture of the other
    points, read off their tiles a few times a second.

    A tile whose point sent nothing newer keeps showing its last picture (the compositor has
    nothing fresher to show); reading it again would measure how long the tile was frozen, a
    frame rate, not how late a picture arrived. So each point's picture is timed once, the
    first time its counter is seen; the repeats are counted apart (`frozen`)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.arrivals: list[float] = []
        self.ages: list[tuple[float, int]] = []
        self.frozen: list[tuple[float, int]] = []
        self._last: dict[str, int] = {}

    async def run(self) -> None:
        subscription = self.agent.call.received_video.subscribe("latency", capacity=2)
        next_read = 0.0
        async for frame in subscription:
            now = time.time()
            self.arrivals.append(now)
            layout = self.agent.call.layout
            if layout is None or now < next_read:
                continue
            next_read = now + 0.3
            luma = frame.to_ndarray()[: frame.height]
            for tile in layout.tiles:
                if tile.device == self.agent.device:
                    continue
                tag = read_tag(luma[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width])
                if tag is None:
                    continue
                age = (now, tag.age_ms(int(now * 1000) & 0xFFFFFFFF))
                if self._last.get(tile.device) == tag.counter:
                    self.frozen.append(age)
                else:
                    self._last[tile.device] = tag.counter
                    self.ages.append(age)

    def window(self, start: float, end: float) -> tuple[float, list[int]]:
        fps = sum(1 for t in self.arrivals if start <= t < end) / (end - start)
        return fps, sorted(a for t, a in self.ages if start <= t < end)

    def frozen_in(self, start: float, end: float) -> list[int]:
        return sorted(a for t, a in self.frozen if start <= t < end)


def p95(ages: list[int]) -> int:
    return ages[min(len(ages) - 1, int(len(ages) * 0.95))]


# This test was an expected failure until stop 19: on about 1 run in 6 a picture 5.9-8.2 s old
# reached the point after newer ones (a late retransmission that aiortc's jitter buffer took for
# a sender restart). Receivers now drop a frame timed before one already received
# (`receiver_stale_frame_dropped` in the log), and the test is strict.
async def test_latency_stays_bounded_while_fps_falls_under_cpu_shortage(
        tmp_path: Path, broker: Mosquitto) -> None:
    # Slow is not lost: media timeouts long enough that a starved point is not dropped.
    config = make_controller_config(tmp_path, broker, bridge={**BRIDGE, "media_timeout": 8.0},
                                    sessions={"invite_timeout": 5.0})
    async with running_controller(config) as controller, \
            points(tmp_path, broker, DEVICES, media_timeout=8.0) as agents:
        await eventually(lambda: all(controller.registry.get(d) for d in DEVICES), 10,
                         what="every box registered")
        await controller.sessions.open("bl-host", DEVICES[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every point live")
        probe = Probe(agents["bl-1"])
        task = asyncio.ensure_future(probe.run())
        try:
            await asyncio.sleep(3.0)
            start = time.time()
            await asyncio.sleep(4.0)
            fps_free, ages_free = probe.window(start, time.time())
            # How much CPU the session needs depends on the machine: tighten the cap until
            # the frame rate falls, and judge the latency at that cap.
            for share in STARVED_SHARES:
                with cpu_cgroup() as group, starved(group, share):
                    await asyncio.sleep(4.0)  # let whatever can pile up pile up
                    start = time.time()
                    await asyncio.sleep(6.0)
                    # On a loaded machine pictures may be rare: wait for a few to measure.
                    for _ in range(28):
                        if len(probe.window(start, time.time())[1]) >= 3:
                            break
                        await asyncio.sleep(0.5)
                    end = time.time()
                fps_starved, ages_starved = probe.window(start, end)
                if fps_starved < 0.8 * fps_free:
                    break
                await asyncio.sleep(2.0)  # back to free before the next, tighter cap
        finally:
            task.cancel()
        assert ages_free, "no readable picture before the cap"
        if not ages_starved:  # the latency of pictures that never came cannot be judged
            pytest.skip(f"the tightest cap left no readable picture ({fps_free:.1f} fps free, "
                        f"{fps_starved:.1f} starved)")
        frozen = probe.frozen_in(start, end)
        figures = (f"free: {fps_free:.1f} fps, p95 {p95(ages_free)} ms; starved: "
                   f"{fps_starved:.1f} fps, p95 {p95(ages_starved)} ms, max {ages_starved[-1]} ms "
                   f"over {len(ages_starved)} pictures; {len(frozen)} reads of a frozen tile"
                   + (f" up to {frozen[-1]} ms old" if frozen else ""))
        print(figures)  # noqa: T201 - the figures, for a reader of -s output
        assert fps_starved < 0.8 * fps_free, f"the CPU cap did not bite ({figures})"
        assert p95(ages_starved) <= LATENCY_BOUND_MS, f"latency grew ({figures})"
