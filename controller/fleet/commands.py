"""Commands to boxes: MQTT 5 request/response from the controller's side.

A request carries a response topic in the box's `res/` subtree, a random correlation id and a
message expiry equal to the caller's timeout, so a box that was away never runs a command
whose caller has already given up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)


class CommandClient:
    def __init__(self, link: MqttLink, controller_id: str) -> None:
        self._link = link
        self._controller = controller_id
        self._waiting: dict[bytes, asyncio.Future[protocol.Response]] = {}
        self._observers: list[Callable[[str, float, str], None]] = []

    def observe(self, observer: Callable[[str, float, str], None]) -> None:
        """`observer(command, seconds, outcome)` after each request; outcome is `ok`, the
        error code the box answered, or `timeout` (metrics listen here)."""
        self._observers.append(observer)

    @property
    def response_filter(self) -> str:
        return protocol.device_filter("+", f"res/{self._controller}")

    async def request(self, device: str, name: str, args: dict[str, Any] | None = None,
                      *, timeout: float = 10.0) -> protocol.Response:
        command = protocol.Command(id=protocol.new_id(), ts=protocol.now_ms(), args=args or {})
        correlation = command.id.encode()
        future: asyncio.Future[protocol.Response] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        started, outcome = time.monotonic(), "timeout"
        try:
            self._link.publish(
                protocol.command_topic(device, name), protocol.encode(command), qos=1,
                response_topic=protocol.response_topic(device, self._controller),
                correlation_data=correlation, expiry=max(1, math.ceil(timeout)),
            )
            log.info("command_sent device=%s command=%s id=%s", device, name, command.id)
            async with asyncio.timeout(timeout):
                response = await future
            outcome = "ok" if response.ok else (response.error.code if response.error else "error")
            return response
        except TimeoutError:
            log.warning("command_timeout device=%s command=%s id=%s", device, name, command.id)
            return protocol.error_response(
                command.id, "timeout", f"{device} did not answer {name} within {timeout:g}s"
            )
        finally:
            self._waiting.pop(correlation, None)
            elapsed = time.monotonic() - started
            for observer in self._observers:
                observer(name, elapsed, outcome)

    def on_response(self, device: str, message: Inbound) -> None:
        correlation = message.correlation_data
        future = self._waiting.get(correlation or b"")
        if future is None or future.done():
            log.info("response_unmatched device=%s", device)
            return
        try:
            response = protocol.decode(message.payload, protocol.Response)
        except protocol.ProtocolError as exc:
            log.error("response_invalid device=%s error=%s", device, exc)
            response = protocol.error_response(
                (correlation or b"invalid").decode(errors="replace")[:64] or "invalid",
                "internal", f"invalid response from {device}: {exc}",
            )
        future.set_result(response)
