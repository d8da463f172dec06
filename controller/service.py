"""The controller process: MQTT link, registry, command client and HTTP API under one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from aiohttp import web

from tiepdan.controller.archive.store import Archive
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import Provisioning
from tiepdan.controller.fleet.commands import CommandClient
from tiepdan.controller.fleet.ingest import Ingest
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.http.app import admin_token, build_app
from tiepdan.controller.http.archive import add_archive_routes
from tiepdan.controller.http.sessions import add_session_routes
from tiepdan.controller.identities import Identities
from tiepdan.controller.sessions.bridge import build_bridge
from tiepdan.controller.sessions.bridge_recording import BridgeRecording
from tiepdan.controller.sessions.closing import Closer
from tiepdan.controller.sessions.engine import Sessions
from tiepdan.controller.sessions.schedule import Schedules
from tiepdan.controller.signing import SigningKey
from tiepdan.controller.store import Database
from tiepdan.controller.updates.service import Updates
from tiepdan.firmware import protocol
from tiepdan.firmware.core.config import link_settings
from tiepdan.firmware.core.mqtt import Inbound, MqttLink, Will

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.id = config.controller.id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.data_dir / "controller.db")
        self.registry = Registry(self.db)
        self.identities = Identities(self.db)
        self.signing = SigningKey(config.data_dir / "signing.key")
        self.link = MqttLink(
            link_settings(config.mqtt, f"controller-{config.controller.id}", config.tls_file,
                          "controller"),
            on_message=self._on_message,
            on_connect=self._on_connect,
            before_connect=self._will,
            manual_ack=True,
        )
        self.rpc = CommandClient(self.link, self.id)
        self.ingest = Ingest(self.registry, self.rpc, self.link)
        self.token = admin_token(config.token_file)
        self.bridge = build_bridge(config.bridge)
        self.sessions = Sessions(self, self.bridge)
        self.schedules = Schedules(self, self.sessions)
        self.app = build_app(self, self.token)
        add_session_routes(self.app)
        self.archive = Archive(config.archive, config.data_dir, self.identities, self.signing,
                               self.signing.public_raw(), self.id, self._session_points)
        add_archive_routes(self.app)
        self.closer = Closer(self)
        self.bridge_recording = BridgeRecording(self)
        self.provisioning = Provisioning(self)
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.updates = Updates(self)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.http.host, self.config.http.port)
        await site.start()
        self.http_port = int(runner.addresses[0][1])
        log.info("controller_start id=%s api=http://%s:%s", self.id, self.config.http.host,
                 self.http_port)
        self.spawn(self.link.run(), "mqtt")
        self.spawn(self._flush_loop(), "registry-flush")
        self.spawn(self.sessions.run(), "sessions")
        self.spawn(self.schedules.run(), "schedules")
        self.spawn(self.provisioning.run(), "provisioning")
        self.spawn(self.closer.run(), "closer")
        await asyncio.to_thread(self.bridge_recording.recover)
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("controller_stop id=%s", self.id)
            if self.link.connected:
                state = protocol.ControllerState(state="offline", ts=protocol.now_ms())
                done = self.link.publish(protocol.controller_state_topic(self.id),
                                         protocol.encode(state), retain=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(done, 2.0)
            await self.link.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.bridge_recording.close()
            await self.sessions.close()
            self.registry.flush()
            await runner.cleanup()
            self.archive.close()
            self.db.close()

    async def set_desired(self, device: str, config: protocol.RemoteConfig) -> protocol.Desired:
        document = self.registry.set_desired(device, config)
        await self.link.publish(protocol.desired_topic(device), protocol.encode(document),
                                retain=True)
        return document

    def _session_points(self, session_id: str) -> list[str] | None:
        """For the archive: who may record in a session (None: no such session)."""
        if self.sessions.get(session_id) is None:
            return None
        return [p.device for p in self.sessions.points(session_id)]

    def _on_message(self, message: Inbound) -> None:
        self.ingest.on_message(message)

    def _will(self) -> Will:
        lost = protocol.ControllerState(state="lost", ts=protocol.now_ms())
        return Will(protocol.controller_state_topic(self.id), protocol.encode(lost))

    async def _on_connect(self, session_present: bool) -> None:
        await self.link.subscribe(*self.ingest.subscriptions)
        online = protocol.ControllerState(state="online", ts=protocol.now_ms())
        self.link.publish(protocol.controller_state_topic(self.id), protocol.encode(online),
                          retain=True)

    async def _flush_loop(self) -> None:
        interval = self.config.registry.flush_interval
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            try:
                self.registry.flush()
                rounds += 1
                if rounds % 600 == 0:
                    self.registry.prune_events(self.config.registry.events_kept)
            except Exception:
                log.exception("registry_flush_failed")
