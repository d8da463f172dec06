"""The agent's side of the local channel: the updater's operations, asked over its socket.

Same methods as `updater.Updater`, so the agent's job logic does not care which one it has.
One connection per request; progress frames are handed to the caller as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from tiepdan.firmware.update import channel
from tiepdan.firmware.update.updater import Stopping

log = logging.getLogger(__name__)

CONNECT_PATIENCE = 15.0  # the updater may be restarting (systemd restarts it in seconds)
REPLY_TIMEOUT = 120.0  # an answer to anything but a fetch (an install writes a whole slot)


class RemoteUpdater:
    def __init__(self, path: str) -> None:
        self.path = path

    def stop(self) -> None:
        """Nothing to stop here: closing the connection stops the updater's download."""

    async def recover(self) -> None:
        """The updater cleans up half-built slots itself when it starts."""

    async def fetch(self, request: channel.Fetch, progress: Callable[[float], None]
                    ) -> dict[str, str]:
        result = await self._ask(request, progress, timeout=None)
        return {"target": str(result["target"]), "version": str(result["version"])}

    async def install(self, request: channel.Install) -> str:
        return str((await self._ask(request))["slot"])

    async def switch(self, slot: str, target: str, job: str | None) -> None:
        await self._ask(channel.Switch(slot, target, job))  # type: ignore[arg-type]

    async def commit(self, slot: str) -> bool:
        return bool((await self._ask(channel.Commit(slot)))["done"])  # type: ignore[arg-type]

    async def rollback(self, slot: str, reason: str) -> bool:
        reply = await self._ask(channel.Rollback(slot, reason[:2000]))  # type: ignore[arg-type]
        return bool(reply["done"])

    async def mark_reported(self) -> None:
        await self._ask(channel.Reported())

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_PATIENCE
        while True:
            try:
                return await asyncio.open_unix_connection(self.path, limit=channel.MAX_LINE)
            except OSError as exc:
                if loop.time() >= deadline:
                    raise channel.Refused("failed", f"the updater at {self.path} is not "
                                                    f"reachable: {exc.strerror or exc}") from None
                await asyncio.sleep(0.5)

    async def _ask(self, request: channel.Request,
                   progress: Callable[[float], None] | None = None,
                   timeout: float | None = REPLY_TIMEOUT) -> Any:
        reader, writer = await self._connect()
        try:
            writer.write(channel.encode(request))
            await writer.drain()
            async with asyncio.timeout(timeout):
                while True:
                    line = await reader.readline()
                    if not line:
                        raise channel.Refused("failed", "the updater closed the connection "
                                                        "without an answer")
                    try:
                        frame = channel.decode_frame(line)
                    except msgspec.DecodeError as exc:
                        raise channel.Refused("failed", f"the updater answered nonsense: "
                                                        f"{exc}") from None
                    if isinstance(frame, channel.Progress):
                        if progress is not None:
                            progress(frame.percent)
                        continue
                    break
        except TimeoutError:
            raise channel.Refused("failed", f"the updater did not answer "
                                            f"{type(request).__name__.lower()} in time") from None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if frame.ok:
            return frame.result
        error = frame.error or channel.ErrorBody("failed", "no reason given")
        if error.code == "stopping":
            raise Stopping()
        if error.code in ("rejected", "failed", "succeeded"):
            raise channel.Refused(error.code, error.message)  # type: ignore[arg-type]
        log.error("updater_error code=%s error=%s", error.code, error.message)
        raise channel.Refused("failed", f"updater: {error.code}: {error.message}")
