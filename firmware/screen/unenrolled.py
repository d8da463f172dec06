"""The not-enrolled screen, shown before there is an agent: a box without its certificate.

The agent cannot start without the TLS material enrollment gives it, so `tiepdan-agent` itself
holds this screen (what to do, the device code and its QR code) until the certificate appears,
then restarts into the real agent. Nobody in the hall needs to read a log.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from tiepdan.board.display import Display, DisplayMissing, Rgb
from tiepdan.board.errors import BoardError
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.agent.notifier import Notifier
from tiepdan.firmware.screen.catalog import screen_translator
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.state import ScreenState

__all__ = ["show_until_enrolled"]

log = logging.getLogger(__name__)

POLL_S = 2.0


async def show_until_enrolled(config: AgentConfig, display: Display, certificate: Path,
                              *, poll: float = POLL_S, notifier: Notifier | None = None) -> None:
    """Show the not-enrolled screen (redrawn each minute) until `certificate` exists.

    Under systemd (`Type=notify`, `WatchdogSec`) the wait is a service that is up and alive,
    not one that never started: READY once, then a watchdog ping every poll.
    """
    if notifier is not None:
        notifier.ready("not enrolled: the screen says what to do")
    zone = ZoneInfo(config.screen.timezone)
    shown: datetime | None = None
    log.warning("screen_not_enrolled device=%s waiting_for=%s", config.device.id, certificate)
    try:
        while not await asyncio.to_thread(certificate.is_file):
            now = datetime.now(zone).replace(second=0, microsecond=0)
            try:
                if display.mode is None:
                    await display.start()
                    shown = None
                if now != shown:
                    assert display.mode is not None
                    layouts = Layouts(display.mode, screen_translator(config.screen.language))
                    state = ScreenState(kind="fault", fault="not_enrolled",
                                        hall=config.device.name, commune=config.device.commune,
                                        device=config.device.id, now=now)
                    frame = await asyncio.to_thread(_draw, layouts, state)
                    await display.show(frame)
                    shown = now
            except (DisplayMissing, BoardError) as exc:
                log.warning("display_missing error=%s", exc)
                await display.stop()
            if notifier is not None:
                notifier.watchdog()
            await asyncio.sleep(poll)
    finally:
        await display.stop()
    log.info("screen_enrolled device=%s", config.device.id)


def _draw(layouts: Layouts, state: ScreenState) -> Rgb:
    return np.asarray(layouts.draw(state), dtype=np.uint8)


def wait_for_enrollment(config: AgentConfig) -> bool:
    """On a box with a real display and no certificate yet, hold the not-enrolled screen until
    enrollment has written it (True: start the agent again). False where nobody would see it
    (simulated or no display) or when something else is wrong with the TLS files."""
    from tiepdan.board.display import open_display
    from tiepdan.board.profile import load_profile

    certificate = config.tls_file(config.mqtt.cert_file, "device.pem")
    if not config.mqtt.tls or certificate.is_file() or config.screen.display == "none":
        return False
    backend = config.screen.display
    if backend == "auto":
        try:
            backend = "simulated" if load_profile(config.board.profile).simulated else "kmsdrm"
        except BoardError:
            return False
    if backend != "kmsdrm":
        return False
    asyncio.run(show_until_enrolled(config, open_display(backend), certificate,
                                    notifier=Notifier()))
    return True
