"""The hall's screen and sounds, following the agent: which screen, when to redraw, what to play.

Every `TICK_S` the presenter reads the agent's state into a `ScreenState` (`situation`: call,
link, recording, update, disk); a screen is redrawn only when that state (or the minute)
changes, so the idle box costs next to nothing. In a call it shows each composed picture the
bridge sends, as it arrives (drawn on a thread of its own, see `render`). Sounds follow the
transitions: the chime repeats while the box is invited, a tone on joining and leaving, another
on mute and unmute.

A missing display (no HDMI, TV unplugged) is a health fault: reported as the `display-missing`
alarm and in `get-status`, retried every `RETRY_S`, and never stops the agent; neither does a
frame of a size that cannot be shown, nor a speaker that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import av
import numpy as np

from tiepdan.board.audio import open_speaker
from tiepdan.board.display import Display, DisplayMissing, Rgb, open_display
from tiepdan.board.display.simulated import SimulatedDisplay
from tiepdan.board.errors import BoardError
from tiepdan.firmware import protocol
from tiepdan.firmware.media.fanout import Subscription
from tiepdan.firmware.screen.care import Cec, Level, OfficeHours, apply_level
from tiepdan.firmware.screen.catalog import screen_translator
from tiepdan.firmware.screen.render import CallRenderer
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.situation import Situation
from tiepdan.firmware.screen.sounds import Sound, Sounds
from tiepdan.firmware.screen.state import ScreenState

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent

__all__ = ["Presenter"]

log = logging.getLogger(__name__)

TICK_S = 0.1
RETRY_S = 5.0
ALARM = "display-missing"
SNAPSHOT_EVERY_S = 2.0


SNAPSHOT_ENV = "TIEPDAN_SCREEN_SNAPSHOT"


class Presenter:
    def __init__(self, agent: Agent, display: Display | None = None) -> None:
        self.agent = agent
        self.config = config = agent.config.screen
        self.zone = ZoneInfo(config.timezone)
        # A simulated board's "HDMI" is a PNG file when the one who runs it asks for it
        # (SNAPSHOT_ENV, as TIEPDAN_BOARD=sim asks for the simulated board itself).
        self.snapshot = config.snapshot or (
            os.environ.get(SNAPSHOT_ENV, "") if agent.profile.simulated else "")
        backend: str = config.display
        if backend == "auto":  # nobody looks at a simulated board's screen unless asked
            backend = ("simulated" if self.snapshot else "none") if agent.profile.simulated \
                else "kmsdrm"
        if display is None and backend != "none":
            display = open_display(backend, width=config.width, height=config.height)
        self.display = display
        self.sounds = Sounds(lambda: open_speaker(agent.profile.audio), config.volume)
        self.office = OfficeHours(config.office_hours, config.office_days, config.outside_hours,
                                  config.dim)
        self.cec = Cec(config.cec_device) if config.cec else None
        self.fault: str | None = None  # the display's own fault, for get-status
        self.state: ScreenState | None = None
        self.level: Level = "on"
        self.shown = 0
        self._language = config.language
        self._layouts: Layouts | None = None
        self.renderer: CallRenderer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="screen")
        self._chime: asyncio.Task[None] | None = None
        self._sound_tasks: set[asyncio.Task[None]] = set()
        self.situation = Situation(agent, config, self.zone)
        self._picture: Subscription[av.VideoFrame] | None = None
        self._self_view: Subscription[av.VideoFrame] | None = None
        self._last_picture: av.VideoFrame | None = None
        self._last_self: av.VideoFrame | None = None
        self._heard: ScreenState | None = None  # what the sounds last followed
        self._retry_at = 0.0
        self._snapshot_at = 0.0
        # A simulated board without a screen has nobody to show or play anything to: stay idle
        # (a test fleet may run thousands of agents in one process).
        self.active = display is not None or not agent.profile.simulated

    # -- configuration ---------------------------------------------------------------------------

    def apply_remote(self, remote: protocol.RemoteConfig) -> None:
        self.situation.remote = remote
        self.sounds.volume = remote.volume if remote.volume is not None else self.config.volume
        language = remote.language or self.config.language
        if language != self._language:
            log.info("screen_language language=%s", language)
            self._language = language
            self._layouts = self.renderer = None
            self.state = None  # redraw
        window = remote.office_hours if remote.office_hours is not None else \
            self.config.office_hours
        if window != self.office.window:
            self.office = OfficeHours(window, self.config.office_days,
                                      self.config.outside_hours, self.config.dim)

    def layouts(self, mode: tuple[int, int]) -> Layouts:
        if self._layouts is None or (self._layouts.width, self._layouts.height) != mode:
            self._layouts = Layouts(mode, screen_translator(self._language))
            self.renderer = None
        return self._layouts

    def status(self) -> dict[str, Any]:
        display = self.display
        return {
            "display": None if display is None else display.backend,
            "mode": None if display is None or display.mode is None else
            f"{display.mode[0]}x{display.mode[1]}",
            "fault": self.fault, "screen": None if self.state is None else self.state.kind,
            "language": self._language, "level": self.level, "volume": self.sounds.volume,
            "shown": self.shown, "sounds": self.sounds.played[-5:],
            "cec": None if self.cec is None else (self.cec.error or self.cec.powered),
        }

    async def read_state(self) -> ScreenState:
        return await self.situation.read(in_picture=self._last_picture is not None)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.step()
                except DisplayMissing as exc:
                    await self._missing(str(exc))
                except BoardError as exc:  # unusable rather than absent (no pygame, ...)
                    await self._missing(str(exc))
                if self.display is None or self.display.mode is None \
                        or self.state is None or self.state.kind != "call":
                    await asyncio.sleep(TICK_S)
        finally:
            await self._close()

    async def step(self) -> None:
        """Read the state and, if the hall should see something new, show it."""
        display = self.display
        state = await self.read_state()
        self._sounds_for(self._heard, state)
        self._heard = state
        previous = self.state
        if display is None:
            self.state = state
            return
        if display.mode is None:
            if time.monotonic() < self._retry_at:
                return
            await display.start()
            self._found()
            previous = None
        assert display.mode is not None
        if state.kind == "call":
            await self._call_frame(display, state)
            self.state = state
            return
        self._unsubscribe()
        level = self._level(state)
        if state == previous and level == self.level:
            return
        await self._cec(level)
        layouts = self.layouts(display.mode)
        frame = await self._on_thread(self._draw, layouts, state, level)
        await display.show(frame)
        self.state, self.level = state, level
        self.shown += 1
        await self._snapshot(force=True)
        log.info("screen_shown screen=%s fault=%s level=%s", state.kind, state.fault, level)

    def _level(self, state: ScreenState) -> Level:
        if state.kind in ("invited", "joining", "call", "after") or state.fault == "updating":
            return "on"
        return self.office.level(state.now)

    def _draw(self, layouts: Layouts, state: ScreenState, level: Level) -> Rgb:
        if level == "blank":
            return np.zeros((layouts.height, layouts.width, 3), dtype=np.uint8)
        frame = np.asarray(layouts.draw(state), dtype=np.uint8)
        return apply_level(frame, level, self.config.dim)

    async def _call_frame(self, display: Display, state: ScreenState) -> None:
        """Wait (briefly) for the next composed picture and show it with the badges."""
        assert display.mode is not None
        call = self.agent.call
        if self._picture is None:
            self._picture = call.received_video.subscribe("screen", capacity=4)
            self._self_view = call.self_view.subscribe("screen", capacity=2)
            self._last_picture = self._last_self = None
        try:
            async with asyncio.timeout(TICK_S * 2):
                picture = await self._picture.latest()
        except TimeoutError:
            picture = None
        if self._self_view is not None:
            self._last_self = self._self_view.newest() or self._last_self
        if picture is None and state == self.state:
            return  # nothing new to show
        if picture is not None:
            self._last_picture = picture
        if self.renderer is None or (self.renderer.width, self.renderer.height) \
                != display.mode:
            self.renderer = CallRenderer(display.mode, self.layouts(display.mode))
        renderer = self.renderer
        frame = await self._on_thread(renderer.compose, self._last_picture, self._last_self,
                                      state)
        await display.show(frame)
        self.level = "on"
        self.shown += 1
        await self._snapshot(force=False)
        if self.state is None or self.state.kind != "call":
            await self._cec("on")
            log.info("screen_shown screen=call")

    async def _snapshot(self, *, force: bool) -> None:
        """`screen.snapshot`: the simulated display's picture as a PNG, for people watching a
        demo; on every new screen, and every `SNAPSHOT_EVERY_S` in a call."""
        display = self.display
        if not self.snapshot or not isinstance(display, SimulatedDisplay):
            return
        now = time.monotonic()
        if not force and now - self._snapshot_at < SNAPSHOT_EVERY_S:
            return
        self._snapshot_at = now
        try:
            await self._on_thread(partial(display.snapshot, Path(self.snapshot),
                                          optimize=False))
        except (BoardError, OSError) as exc:
            log.warning("screen_snapshot_failed path=%s error=%s", self.snapshot, exc)

    async def _on_thread(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _unsubscribe(self) -> None:
        for subscription in (self._picture, self._self_view):
            if subscription is not None:
                subscription.close()
        self._picture = self._self_view = None
        self._last_picture = self._last_self = None

    async def _cec(self, level: Level) -> None:
        if self.cec is not None and (level == "blank") != (self.level == "blank"):
            await self.cec.power(level != "blank")

    # -- faults ----------------------------------------------------------------------------------

    async def _missing(self, reason: str) -> None:
        if self.fault is None:
            log.error("display_missing error=%s", reason)
            self.agent.raise_alarm(ALARM, "warning", f"no display: {reason}"[:200])
        self.fault = reason
        self.state = None
        self._retry_at = time.monotonic() + RETRY_S
        self._unsubscribe()
        if self.display is not None:
            with contextlib.suppress(BoardError):
                await self.display.stop()

    def _found(self) -> None:
        if self.fault is not None:
            log.info("display_found")
            self.agent.raise_alarm(ALARM, "info", "display connected again", active=False)
        self.fault = None

    # -- sounds ----------------------------------------------------------------------------------

    def _sounds_for(self, before: ScreenState | None, after: ScreenState) -> None:
        was = before.kind if before is not None else None
        if after.kind == "invited" and self._chime is None:
            self._chime = asyncio.ensure_future(self._ring())
        elif after.kind != "invited" and self._chime is not None:
            self._chime.cancel()
            self._chime = None
        if after.kind == "call" and was in ("joining", "invited", "idle", "after"):
            self._play("join")
        elif was == "call" and after.kind != "call":
            self._play("leave")
        elif was == "call" and before is not None and before.muted != after.muted:
            self._play("mute_on" if after.muted else "mute_off")

    async def _ring(self) -> None:
        """The chime, again and again, until the invitation is answered, declined or over."""
        while True:
            await self.sounds.play("chime")
            await asyncio.sleep(self.config.chime_every)

    def _play(self, sound: Sound) -> None:
        task = asyncio.ensure_future(self.sounds.play(sound))
        self._sound_tasks.add(task)
        task.add_done_callback(self._sound_tasks.discard)

    async def _close(self) -> None:
        tasks = [t for t in (self._chime, *self._sound_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._unsubscribe()
        await self.sounds.close()
        if self.display is not None:
            with contextlib.suppress(BoardError):
                await self.display.stop()
        self._thread.shutdown(wait=False)
