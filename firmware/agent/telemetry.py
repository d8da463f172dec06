"""Periodic health reports: sensors read in a thread, published QoS 0 with an expiry.

Health is a stream, not a record: a reading older than two intervals is worthless, so the broker
drops it (message expiry) rather than queue it for a controller that was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tiepdan.board.sensors import Readings
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import MqttLink

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, device: str, sensors: Callable[[], Readings], link: MqttLink,
                 outbox_len: Callable[[], int], interval: float,
                 backlog: Callable[[], float | None] | None = None) -> None:
        self._device = device
        self._sensors = sensors
        self._link = link
        self._outbox_len = outbox_len
        self._backlog = backlog
        self.interval = interval
        self.latest: protocol.Health | None = None
        self._wake = asyncio.Event()

    def set_interval(self, seconds: float) -> None:
        self.interval = seconds
        self._wake.set()

    async def read(self) -> protocol.Health:
        h, backlog = await asyncio.to_thread(self._gather)
        self.latest = protocol.Health(
            ts=protocol.now_ms(),
            uptime_s=h.uptime_s,
            cpu_percent=h.cpu_percent,
            mem_percent=h.mem_percent,
            disk_free_bytes=h.disk_free_bytes,
            disk_total_bytes=h.disk_total_bytes,
            load1=h.load1,
            outbox=self._outbox_len(),
            cpu_temp_c=h.cpu_temp_c,
            throttled=h.throttled,
            under_voltage=h.under_voltage,
            clock_synced=h.clock_synced,
            recording_backlog_s=backlog,
        )
        return self.latest

    def _gather(self) -> tuple[Readings, float | None]:
        """Both blocking reads in one worker call: a thread hop per report, not two."""
        readings = self._sensors()
        if self._backlog is None:
            return readings, None
        try:
            return readings, self._backlog()
        except Exception:
            log.exception("telemetry_backlog_failed device=%s", self._device)
            return readings, None

    async def run(self) -> None:
        topic = protocol.tele_topic(self._device, "health")
        while True:
            if self._link.connected:
                try:
                    health = await self.read()
                except Exception:
                    log.exception("telemetry_read_failed device=%s", self._device)
                else:
                    self._link.publish(topic, protocol.encode(health), qos=0,
                                       expiry=max(2, int(2 * self.interval)))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
