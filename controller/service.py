"""The controller process: every central feature assembled under one loop (the composition root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from aiohttp import web

from tiepdan.controller.alerts.alerts import Alerts
from tiepdan.controller.archive.store import Archive
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.console.https import start_https
from tiepdan.controller.console.routes import add_console
from tiepdan.controller.enrollment.provisioning import Provisioning
from tiepdan.controller.fleet.commands import CommandClient
from tiepdan.controller.fleet.ingest import Ingest
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.history.history import History
from tiepdan.controller.http import alerts as alert_routes
from tiepdan.controller.http import archive as archive_routes
from tiepdan.controller.http import fleet as fleet_routes
from tiepdan.controller.http import history as history_routes
from tiepdan.controller.http import metrics as metrics_routes
from tiepdan.controller.http import provisioning as provisioning_routes
from tiepdan.controller.http import sessions as session_routes
from tiepdan.controller.http import updates as update_routes
from tiepdan.controller.http.app import admin_token, build_app
from tiepdan.controller.http.boxes import BoxListener
from tiepdan.controller.identities import Identities
from tiepdan.controller.metrics.metrics import Metrics, central_certificates
from tiepdan.controller.people.people import People
from tiepdan.controller.sessions.announce import NextSessions
from tiepdan.controller.sessions.bridge import build_bridge
from tiepdan.controller.sessions.bridge_recording import BridgeRecording
from tiepdan.controller.sessions.closing import Closer
from tiepdan.controller.sessions.engine import Sessions
from tiepdan.controller.sessions.schedule import Schedules
from tiepdan.controller.signing import SigningKey
from tiepdan.controller.store import Database
from tiepdan.controller.updates.campaign import Campaigns
from tiepdan.controller.updates.service import Updates
from tiepdan.firmware import protocol
from tiepdan.firmware.core.config import link_settings
from tiepdan.firmware.core.mqtt import Inbound, MqttLink, Will

log = logging.getLogger(__name__)


class Controller:
    """The composition root of the central side.

    Every feature is built here from the parts it uses, and every hook between features is
    connected in `_connect`, so this class is the one place that shows the whole assembly;
    constructors neither start tasks nor register themselves anywhere.
    """

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.id = config.controller.id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.controller_db)
        self.registry = Registry(self.db)
        self.identities = Identities(self.db)
        self.history = History(self.db, config.history)
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
        self.sessions = Sessions(self.db, config.sessions, self.registry, self.rpc, self.link,
                                 self.bridge, config.bridge)
        self.schedules = Schedules(self.db, config.sessions.timezone, self.sessions)
        self.next_sessions = NextSessions(self.registry, self.sessions, self.set_desired)
        self.people = People(self.db, config.console, self.token)
        self.archive = Archive(config.archive, config.data_dir, self.identities, self.signing,
                               self.signing.public_raw(), self.id, self._session_points,
                               index=config.database.url)
        self.closer = Closer(self.sessions, self.archive, f"controller-{self.id}",
                             config.archive.close_interval)
        self.bridge_recording = BridgeRecording(self.archive, config.bridge, config.archive,
                                                self.signing.path)
        self.provisioning = Provisioning(config, self.db, self.registry, self.identities,
                                         self.signing, self.link, self._box_url,
                                         self.archive.freeze)
        self.boxes: BoxListener = BoxListener(self, config, self.identities,
                                              self.provisioning.claims)
        self.campaigns = Campaigns(
            self.db, self.registry, self.link,
            lambda: config.ota.public_url.rstrip("/") or f"{self._box_url()}/ota",
            tick=config.ota.tick)
        self.updates = Updates(config.ota, config.ota_repository_path, config.data_dir,
                               self.campaigns)
        self.metrics = Metrics(self.registry, self.db.conn,
                               lambda: (dict(self.ingest.received), self.ingest.rejected),
                               self.archive.stored_by_recorder, self.archive.closed_count,
                               central_certificates(config))
        self.alerts = Alerts(self.db, config.alerts, self.metrics.collect, self.id,
                             gather=self.metrics.families)
        self._connect()
        self.app = build_app(self, self.people, [
            *fleet_routes.routes(),
            *history_routes.routes(),
            *metrics_routes.routes(),
            *alert_routes.routes(),
            *session_routes.routes(),
            *provisioning_routes.routes(),
            *update_routes.routes(),
        ])
        self.boxes.app.add_routes(update_routes.box_routes())
        archive_routes.attach(self.app, self.boxes.app)
        add_console(self.app, self)  # pages, live updates, browser join; its own hooks inside
        self.http_port: int | None = None
        self._runner: web.AppRunner | None = None
        self.https_port: int | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def _box_url(self) -> str:
        """Where boxes reach the box listener; asked late, once it listens."""
        return self.boxes.url

    def _connect(self) -> None:
        """Who hears what. Order matters where two listen to the same source: first come,
        first told."""
        self.bridge.on_peer(self.sessions.on_peer)
        self.bridge.on_layout(self.sessions.on_layout)
        self.bridge.on_offer(self.sessions.on_bridge_offer)
        self.ingest.route("call", self.sessions.on_call_message, suffix="call/+/up")
        # tele/call arrives through the registry's own `tele/+` filter (identical filter: one
        # subscription, one delivery; an overlapping `tele/call` would deliver it twice).
        self.ingest.route("tele", self.sessions.on_tele, suffix="tele/+")
        self.registry.listen(self.sessions.on_device)
        self.registry.listen(self.history.on_device)
        self.rpc.observe(self.metrics.on_command)
        self.sessions.listen(self.closer.on_session)
        self.sessions.listen(self.next_sessions.on_session)
        if self.bridge_recording.enabled:
            self.bridge.on_session_media(self.bridge_recording.on_media)
            self.sessions.listen(self.bridge_recording.on_session)
        self.registry.listen(self.provisioning.check_birth)
        self.ingest.route("jobs", self.campaigns.on_update, suffix="jobs/+/update")

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        """Listen and start every feature's loop; a second call does nothing."""
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])
        self.https_port = await start_https(self._runner, self.config.console)
        log.info("controller_start id=%s api=http://%s:%s", self.id, self.config.http.host,
                 self.http_port)
        self.spawn(self.link.run(), "mqtt")
        self.spawn(self._flush_loop(), "registry-flush")
        self.spawn(self.history.run(), "history")
        if self.config.alerts.enabled:
            self.spawn(self.alerts.run(), "alerts")
        self.spawn(self.sessions.run(), "sessions")
        self.spawn(self.schedules.run(), "schedules")
        self.spawn(self.next_sessions.run(), "next-sessions")
        await self.provisioning.start()
        self.spawn(self.provisioning.run(), "provisioning")
        self.spawn(self.boxes.run(), "boxes")
        self.spawn(self.closer.run(), "closer")
        self.spawn(self.updates.run(), "updates")
        await asyncio.to_thread(self.bridge_recording.recover)

    async def close(self) -> None:
        """Say goodbye on the broker, stop every loop, close the stores; idempotent."""
        if self._closed:
            return
        self._closed = True
        log.info("controller_stop id=%s", self.id)
        if self.link.connected:
            state = protocol.ControllerState(state="offline", ts=protocol.now_ms())
            done = self.link.publish(protocol.controller_state_topic(self.id),
                                     protocol.encode(state), retain=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await done
        await self.link.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.provisioning.stop()
        await self.bridge_recording.close()
        await self.sessions.close()
        self.registry.flush()
        self.history.flush()
        if self._runner is not None:
            await self._runner.cleanup()
        self.archive.close()
        self.db.close()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        try:
            await self.start()
            if ready is not None:
                ready.set()
            await self._stop.wait()
        finally:
            await self.close()

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
