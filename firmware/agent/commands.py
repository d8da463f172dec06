"""Commands to the box: MQTT 5 request/response, idempotent, never fatal.

A request arrives on `cmd/<name>` with a response topic (which must lie in this box's own
`res/` subtree), correlation data and a message expiry that the broker enforces while the box
is away. A command with side effects runs once per id: its answer is stored (on disk, so also
across restarts) and a QoS 1 redelivery gets the stored answer again. Read-only commands are
simply answered again; storing their answers would cost an fsync per request for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tiepdan.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    TiepdanError,
    Unauthorized,
    Unavailable,
)
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.store import BoxStore
from tiepdan.firmware.core.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


# The one place a `TiepdanError` becomes an MQTT error code: the error's own code when the wire
# contract knows it (busy, expired ...), else by its kind.
ERROR_CODES: dict[type[TiepdanError], protocol.ErrorCode] = {
    BadInput: "bad_request",
    NotFound: "not_found",
    Conflict: "conflict",
    Unauthorized: "forbidden",
    Forbidden: "forbidden",
    Unavailable: "unavailable",
}


def error_code(exc: TiepdanError) -> protocol.ErrorCode:
    if exc.code in protocol.ERROR_CODES:
        return exc.code  # type: ignore[return-value]
    for kind in type(exc).__mro__:
        if kind in ERROR_CODES:
            return ERROR_CODES[kind]
    return "internal"


class Commands:
    def __init__(self, device: str, link: MqttLink, store: BoxStore) -> None:
        self._device = device
        self._link = link
        self._store = store
        self._handlers: dict[str, Handler] = {}
        self._read_only: set[str] = set()
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, name: str, handler: Handler, *, read_only: bool = False) -> None:
        protocol.command_topic(self._device, name)  # validates the name
        self._handlers[name] = handler
        if read_only:
            self._read_only.add(name)
        else:
            self._read_only.discard(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def handle(self, name: str, message: Inbound) -> None:
        """Validate synchronously, then run the handler as a task."""
        reply_to = message.response_topic
        if reply_to is None:
            log.error("command_refused device=%s command=%s reason=no_response_topic",
                      self._device, name)
            return
        try:
            protocol.check_response_topic(self._device, reply_to)
        except protocol.ProtocolError as exc:
            log.error("command_refused device=%s command=%s reason=%s", self._device, name, exc)
            return
        try:
            command = protocol.decode(message.payload, protocol.Command)
        except protocol.ProtocolError as exc:
            log.error("command_invalid device=%s command=%s error=%s", self._device, name, exc)
            self._reply(message, protocol.error_response("invalid", "bad_request", str(exc)))
            return
        stored = self._store.response_for(command.id)
        if stored is not None:
            log.info("command_replayed device=%s command=%s id=%s", self._device, name, command.id)
            self._send(message, stored)
            return
        if command.id in self._running:
            return  # a redelivery while the first copy is still running; it will answer
        handler = self._handlers.get(name)
        if handler is None:
            self._reply(message, protocol.error_response(
                command.id, "unknown_command",
                f"unknown command {name!r}; known: {', '.join(self.names)}",
            ), remember=command.id)
            return
        self._running.add(command.id)
        task = asyncio.ensure_future(self._run(name, handler, command, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, name: str, handler: Handler, command: protocol.Command,
                   message: Inbound) -> None:
        log.info("command_start device=%s command=%s id=%s", self._device, name, command.id)
        try:
            result = await handler(command.args)
            response = protocol.Response(id=command.id, ok=True, ts=protocol.now_ms(),
                                         result=result)
        except TiepdanError as exc:
            response = protocol.error_response(command.id, error_code(exc), str(exc))
        except Exception as exc:
            log.exception("command_failed device=%s command=%s id=%s",
                          self._device, name, command.id)
            response = protocol.error_response(command.id, "internal", f"{type(exc).__name__}")
        finally:
            self._running.discard(command.id)
        log.info("command_done device=%s command=%s id=%s ok=%s",
                 self._device, name, command.id, response.ok)
        remember = None if name in self._read_only else command.id
        await self._reply(message, response, remember=remember)

    def _reply(self, message: Inbound, response: protocol.Response,
               remember: str | None = None) -> asyncio.Future[None]:
        payload = protocol.encode(response)
        if len(payload) > protocol.MAX_PAYLOAD:
            response = protocol.error_response(response.id, "internal", "result too large")
            payload = protocol.encode(response)
        if remember is not None:
            self._store.remember_response(remember, payload)
        return self._send(message, payload)

    def _send(self, message: Inbound, payload: bytes) -> asyncio.Future[None]:
        assert message.response_topic is not None
        return self._link.publish(
            message.response_topic, payload, qos=1,
            correlation_data=message.correlation_data, expiry=300,
        )

    async def drain(self, timeout: float) -> None:
        """Let running commands answer before the agent stops."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
