"""Janus's WebSocket API from asyncio: sessions, plugin handles, requests and their events.

One WebSocket carries every request (each with its own `transaction`) and every event Janus
pushes. A plugin request is either synchronous (`success` with the plugin's data: creating a
room) or asynchronous (`ack`, then an `event` with the same transaction, possibly with a JSEP:
joining, publishing). Events without a transaction (`webrtcup`, `hangup`, `media`,
`slowlink`, a publisher leaving) go to the handle's listener. A keepalive every 25 s holds the
Janus session open (its `session_timeout` is 60 s); a lost socket fails every pending request
rather than leaving it waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

KEEPALIVE_S = 25.0
REQUEST_TIMEOUT_S = 10.0

Json = dict[str, Any]
EventListener = Callable[[Json], None]


class JanusApiError(Exception):
    """Janus or its plugin refused a request (`code` is Janus's number, 0 if none)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class JanusConnection:
    """The WebSocket to Janus and one Janus session on it."""

    def __init__(self, url: str, api_secret: str) -> None:
        self.url = url
        self._secret = api_secret
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[Json]] = {}
        self._acks: dict[str, asyncio.Future[Json]] = {}
        self._handles: dict[int, JanusHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.session_id = 0
        self.closed = asyncio.Event()

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.url, protocols=("janus-protocol",),
                                                   heartbeat=None, max_msg_size=4 * 1024 * 1024)
        except Exception:
            await self._http.close()
            raise
        self._tasks.append(asyncio.ensure_future(self._read_loop()))
        reply = await self._send({"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks.append(asyncio.ensure_future(self._keepalive_loop()))
        log.info("janus_session_open url=%s session=%d", self.url, self.session_id)

    async def attach(self, plugin: str, listener: EventListener | None = None) -> JanusHandle:
        reply = await self._send({"janus": "attach", "plugin": plugin,
                                  "session_id": self.session_id})
        handle = JanusHandle(self, int(reply["data"]["id"]), plugin, listener)
        self._handles[handle.id] = handle
        return handle

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed and self.session_id:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._send({"janus": "destroy", "session_id": self.session_id})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._fail_pending("connection closed")
        self.closed.set()

    # -- plumbing --------------------------------------------------------------------------------

    async def _send(self, message: Json, *, wait_event: bool = False,
                    timeout: float = REQUEST_TIMEOUT_S) -> Json:
        """Send a request; returns its `success` (or, with `wait_event`, its `event`)."""
        if self._ws is None or self._ws.closed:
            raise JanusApiError("not connected to janus")
        transaction = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Json] = loop.create_future()
        self._pending[transaction] = done
        if wait_event:
            self._acks[transaction] = loop.create_future()
        message = {**message, "transaction": transaction, "apisecret": self._secret}
        try:
            await self._ws.send_str(json.dumps(message))
            async with asyncio.timeout(timeout):
                return await done
        except TimeoutError:
            raise JanusApiError(f"janus did not answer {message.get('janus')} "
                                f"{message.get('body', {}).get('request', '')} in {timeout}s")\
                from None
        finally:
            self._pending.pop(transaction, None)
            self._acks.pop(transaction, None)

    def _fail_pending(self, why: str) -> None:
        for future in [*self._pending.values(), *self._acks.values()]:
            if not future.done():
                future.set_exception(JanusApiError(why))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    self._dispatch(json.loads(frame.data))
                except Exception:  # one bad event must not end the connection
                    log.exception("janus_event_failed data=%s", str(frame.data)[:300])
        finally:
            log.warning("janus_connection_lost url=%s session=%d", self.url, self.session_id)
            self._fail_pending("janus connection lost")
            self.closed.set()

    def _dispatch(self, message: Json) -> None:
        kind = message.get("janus")
        transaction = message.get("transaction")
        if kind == "ack":
            ack = self._acks.get(transaction or "")
            if ack is not None and not ack.done():
                ack.set_result(message)
            if transaction in self._acks:
                return  # the event follows
        future = self._pending.get(transaction or "") if transaction else None
        if future is not None and not future.done():
            if kind == "error":
                error = message.get("error", {})
                future.set_exception(JanusApiError(str(error.get("reason", "error")),
                                                   int(error.get("code", 0))))
                return
            if kind in ("success", "ack", "event"):
                data = message.get("plugindata", {}).get("data", {})
                if isinstance(data, dict) and data.get("error"):
                    future.set_exception(JanusApiError(str(data["error"]),
                                                       int(data.get("error_code", 0))))
                else:
                    future.set_result(message)
                return
        handle = self._handles.get(int(message.get("sender", 0) or 0))
        if handle is not None:
            handle._event(message)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            try:
                await self._send({"janus": "keepalive", "session_id": self.session_id})
            except JanusApiError as exc:
                log.warning("janus_keepalive_failed error=%s", exc)


class JanusHandle:
    """One plugin handle: at most one peer connection in Janus."""

    def __init__(self, connection: JanusConnection, handle_id: int, plugin: str,
                 listener: EventListener | None) -> None:
        self.connection = connection
        self.id = handle_id
        self.plugin = plugin
        self.listener = listener

    def _base(self) -> Json:
        return {"session_id": self.connection.session_id, "handle_id": self.id}

    async def request(self, body: Json) -> Json:
        """A synchronous plugin request: returns the plugin's data."""
        reply = await self.connection._send({"janus": "message", "body": body, **self._base()})
        data: Json = reply.get("plugindata", {}).get("data", {})
        return data

    async def message(self, body: Json, jsep: Json | None = None,
                      timeout: float = REQUEST_TIMEOUT_S) -> tuple[Json, Json | None]:
        """An asynchronous plugin request: the plugin's data and JSEP from its event."""
        message: Json = {"janus": "message", "body": body, **self._base()}
        if jsep is not None:
            message["jsep"] = jsep
        reply = await self.connection._send(message, wait_event=True, timeout=timeout)
        data: Json = reply.get("plugindata", {}).get("data", {})
        return data, reply.get("jsep")

    async def trickle_done(self) -> None:
        """Our SDP carried every candidate (half-trickle): tell Janus none will follow."""
        await self.connection._send({"janus": "trickle", "candidate": {"completed": True},
                                     **self._base()})

    async def hangup(self) -> None:
        with contextlib.suppress(JanusApiError):
            await self.connection._send({"janus": "hangup", **self._base()})

    async def detach(self) -> None:
        self.connection._handles.pop(self.id, None)
        with contextlib.suppress(JanusApiError):
            await self.connection._send({"janus": "detach", **self._base()})

    def _event(self, message: Json) -> None:
        if self.listener is not None:
            self.listener(message)
