"""The box agent: presence, commands, desired state, buttons, LEDs, health, watchdog, and the
composition root of the box.

The features (the call client, the recorder and its uploader, the updater) are built in
`__init__` from what they use and connected in `_connect`, the one place that shows which
command, topic, button and status goes where; their constructors register nothing and start
nothing, and their loops start in `start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from tiepdan import __version__
from tiepdan.board.panel import Panel
from tiepdan.board.profile import BoardProfile, load_profile
from tiepdan.board.sensors import Readings, Sensors
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.commands import Commands
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.agent.indicators import Indicators
from tiepdan.firmware.agent.notifier import Notifier
from tiepdan.firmware.agent.outbox import Outbox
from tiepdan.firmware.agent.selftest_command import self_test
from tiepdan.firmware.agent.shadow import Shadow
from tiepdan.firmware.agent.store import BoxStore
from tiepdan.firmware.agent.telemetry import Telemetry
from tiepdan.firmware.call.client import CallClient
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import link_settings
from tiepdan.firmware.core.mqtt import Inbound, MqttLink, Will
from tiepdan.firmware.evidence.recipients import Recipients
from tiepdan.firmware.recording.session import BoxRecording
from tiepdan.firmware.recording.uploader import Uploader
from tiepdan.firmware.renewal.renewer import CertificateRenewal
from tiepdan.firmware.screen.presenter import Presenter
from tiepdan.firmware.update.client import OtaClient

log = logging.getLogger(__name__)

Route = Callable[[protocol.Topic, Inbound], None]
ButtonHook = Callable[[str], bool]


class FrontPanel(Protocol):
    """What the agent needs of a panel: `tiepdan.board.panel.Panel` on a box."""

    def on_button(self, callback: Callable[[str], None]) -> None: ...
    def on_power_fail(self, callback: Callable[[bool], None]) -> None: ...
    def power_lost(self) -> bool | None: ...
    def set_led(self, name: str, pattern: str) -> None: ...
    def led_states(self) -> dict[str, str]: ...
    def close(self) -> None: ...


class HealthSource(Protocol):
    """What the agent needs of sensors: `tiepdan.board.sensors.Sensors` on a box."""

    def read(self) -> Readings: ...


class Exit(enum.IntEnum):
    STOPPED = 0
    RESTART = 75  # EX_TEMPFAIL: the service manager (or main) starts the agent again


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        profile: BoardProfile | None = None,
        panel: FrontPanel | None = None,
        sensors: HealthSource | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.device = config.device.id
        self.profile = profile or load_profile(config.board.profile)
        self.panel: FrontPanel = panel or Panel(self.profile)
        self.notifier = notifier or Notifier()
        self.sensors: HealthSource = sensors or Sensors(self.profile, config.state_dir)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = BoxStore(config.state_dir / "state.json")
        self.link = MqttLink(
            link_settings(config.mqtt, config.device.id, config.tls_file, "device"),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            before_connect=self._before_connect,
        )
        self.outbox = Outbox(self.device, self.store, self.link)
        self.commands = Commands(self.device, self.link, self.store)
        self.shadow = Shadow(self.store)
        self.indicators = Indicators(self.panel)
        self.telemetry = Telemetry(self.device, self.sensors.read, self.link,
                                   lambda: len(self.outbox), config.telemetry.interval,
                                   # late-bound: the uploader is built below
                                   backlog=lambda: self.uploader.backlog_seconds())  # noqa: PLW0108
        self.capabilities: list[str] = ["commands", "shadow", "telemetry", "buttons"]
        self.seq = -1
        self.boot_id = _boot_id()
        self.started = time.monotonic()
        self._routes: dict[str, Route] = {}
        self._subscriptions: list[tuple[str, int]] = []
        self._button_hooks: list[ButtonHook] = []
        self._status: dict[str, Callable[[], Any]] = {}
        self._stop = asyncio.Event()
        self._exit = Exit.STOPPED
        self._ready_sent = False
        self._holds: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        logs.ring()
        # The last desired document applies from boot, before the broker is reachable.
        self.shadow.listen(self._apply_remote_config)
        self.call = CallClient(self)
        self.recipients = Recipients(config.state_dir)
        self.uploader = Uploader(self, self.recipients)
        self.recording = BoxRecording(self, self.call, self.uploader)
        self.ota = OtaClient(self)
        self.renewal = CertificateRenewal(self)
        self.screen = Presenter(self)
        self._connect()

    def _connect(self) -> None:
        """Who hears what: every feature's commands, topics, buttons and status."""
        call, recording, ota = self.call, self.recording, self.ota
        self.commands.register("ping", self._cmd_ping, read_only=True)
        self.commands.register("get-status", self._cmd_status, read_only=True)
        self.commands.register("collect-logs", self._cmd_logs, read_only=True)
        self.commands.register("restart-agent", self._cmd_restart)
        self.commands.register("self-test", lambda args: self_test(self, args), read_only=True)
        self.capabilities.append("call")
        self.commands.register("session-invite", call.cmd_invite)
        self.commands.register("session-join", call.cmd_join)
        self.commands.register("session-leave", call.cmd_leave)
        self.route("call", call.on_down, suffix="call/+/down")
        self.on_button(call.on_button)
        self.add_status("call", call.status)
        self.capabilities.append("recording")
        self.add_status("recording", recording.status)
        call.on_live(recording.on_live)
        call.on_left(recording.on_left)
        self.route("jobs", ota.on_jobs, suffix="jobs/notify")
        self.add_status("ota", ota.status)
        self.capabilities.append("ota")
        self.add_status("upload", self.uploader.status)
        self.capabilities.append("screen")
        self.add_status("screen", self.screen.status)
        self.shadow.listen(self.screen.apply_remote)
        call.on_left(self.screen.situation.call_left)

    # -- extension points ------------------------------------------------------------------------

    def route(self, kind: str, handler: Route, qos: int = 1, suffix: str | None = None) -> None:
        """Deliver messages on this box's `<kind>/#` subtree (or `suffix`) to `handler`."""
        self._routes[kind] = handler
        self._subscriptions.append((protocol.device_filter(self.device, suffix or f"{kind}/#"),
                                    qos))

    def on_button(self, hook: ButtonHook) -> None:
        """`hook(name)` returns True when it acted on the press; every press is also an event."""
        self._button_hooks.append(hook)

    def add_status(self, name: str, provider: Callable[[], Any]) -> None:
        self._status[name] = provider

    def hold(self, reason: str) -> None:
        """Mark the box busy (a live session, a recording upload): disruptive work waits."""
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)

    @property
    def holds(self) -> frozenset[str]:
        """Why the box must not be disrupted now; an update installs only when this is empty."""
        return frozenset(self._holds)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a long-lived task under the agent's supervision.

        Such a task only ends when the agent stops; if one dies earlier, the agent logs why and
        restarts itself rather than run on deaf or mute.
        """
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Future[None]) -> None:
        if self._stop.is_set() or task.cancelled():
            return
        error = task.exception()
        log.error("agent_task_died task=%s error=%r", task.get_name(), error,  # type: ignore[attr-defined]
                  exc_info=error)
        self.request_stop(restart=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self, restart: bool = False) -> None:
        self._exit = Exit.RESTART if restart else Exit.STOPPED
        self._stop.set()

    async def run(self) -> Exit:
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.close()
        return self._exit

    async def start(self) -> None:
        """Hardware callbacks, then every loop; a second call does nothing."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()

        def pressed(name: str) -> None:  # on gpiozero's thread
            loop.call_soon_threadsafe(self._button, name)

        self.panel.on_button(pressed)
        if self.panel.power_lost() is not None:

            def power(lost: bool) -> None:  # on gpiozero's thread
                loop.call_soon_threadsafe(self._power_changed, lost)

            self.panel.on_power_fail(power)
            if self.panel.power_lost():
                self._power_changed(True)
        log.info("agent_start device=%s firmware=%s board=%s", self.device, __version__,
                 self.profile.name)
        self.notifier.status("connecting to broker")
        self.recording.recover()
        self.spawn(self.call.run(), "call")
        self.spawn(self.recording.run(), "recording")
        self.spawn(self.ota.run(), "ota")
        self.spawn(self.link.run(), "mqtt")
        self.spawn(self.telemetry.run(), "telemetry")
        self.spawn(self.uploader.run(), "uploader")
        self.spawn(self.renewal.run(), "renewal")
        if self.screen.active:
            self.spawn(self.screen.run(), "screen")
        if self.notifier.watchdog_interval:
            self.spawn(self._watchdog(self.notifier.watchdog_interval), "watchdog")

    async def close(self) -> None:
        """Say goodbye on the broker, stop every loop, release the hardware; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._exit == Exit.RESTART:
            self.notifier.reloading()
        else:
            self.notifier.stopping()
        log.info("agent_stop device=%s exit=%s", self.device, self._exit.name)
        await self.commands.drain(timeout=2.0)
        if self.link.connected:
            state = protocol.DeviceState(state="disconnected", seq=self.seq, ts=protocol.now_ms())
            done = self.link.publish(protocol.state_topic(self.device), protocol.encode(state),
                                     qos=1, retain=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await done
        await self.link.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.panel.close()
        self.store.close()

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd only while the loop turns and every supervised task is alive."""
        loop = asyncio.get_running_loop()
        period = interval / 3
        while True:
            dead = [t.get_name() for t in self._tasks if t.done()]
            started = loop.time()
            await asyncio.sleep(period)
            # A loop blocked for longer than the ping period is sick even if it recovers.
            lag = loop.time() - started - period
            if dead or lag > period:
                log.error("watchdog_withheld dead_tasks=%s loop_lag_s=%.2f", ",".join(dead), lag)
            else:
                self.notifier.watchdog()

    # -- MQTT ------------------------------------------------------------------------------------

    def _before_connect(self) -> Will:
        self.seq = self.store.next_seq()
        lost = protocol.DeviceState(state="lost", seq=self.seq, ts=protocol.now_ms())
        return Will(protocol.state_topic(self.device), protocol.encode(lost))

    async def _on_connect(self, session_present: bool) -> None:
        self.indicators.update(connected=True)
        base = [
            (protocol.device_filter(self.device, "cmd/+"), 1),
            (protocol.desired_topic(self.device), 1),
            (protocol.state_topic(self.device), 1),
        ]
        await self.link.subscribe(*base, *self._subscriptions)
        self._publish_birth()
        self.outbox.resend_pending()
        if not self._ready_sent:
            # READY only now: hardware came up in __init__, and the broker has answered.
            self.notifier.ready(f"online as {self.device}")
            self._ready_sent = True

    def _publish_birth(self) -> None:
        birth = protocol.Birth(
            seq=self.seq,
            ts=protocol.now_ms(),
            firmware=__version__,
            board=self.profile.name,
            boot_id=self.boot_id,
            point=protocol.Point(
                kind=self.config.device.kind,
                name=self.config.device.name,
                province=self.config.device.province,
                commune=self.config.device.commune,
            ),
            keepalive=self.config.mqtt.keepalive,
            capabilities=self.capabilities,
            clock_synced=self.telemetry.latest.clock_synced if self.telemetry.latest else None,
        )
        self.link.publish(protocol.birth_topic(self.device), protocol.encode(birth), retain=True)
        self._publish_state("ready")

    def _publish_state(self, state: protocol.DeviceStateName) -> None:
        payload = protocol.encode(protocol.DeviceState(state=state, seq=self.seq,
                                                       ts=protocol.now_ms()))
        self.link.publish(protocol.state_topic(self.device), payload, retain=True)

    def _on_disconnect(self) -> None:
        self.indicators.update(connected=False)

    def _on_message(self, message: Inbound) -> None:
        try:
            topic = protocol.parse_topic(message.topic)
            if topic.device != self.device:
                raise protocol.ProtocolError(f"topic of another device: {message.topic[:120]}")
            if topic.kind == "cmd" and len(topic.rest) == 1:
                self.commands.handle(topic.leaf, message)
            elif topic.kind == "state" and topic.rest == ("desired",):
                reported = self.shadow.apply(message.payload)
                if reported is not None:
                    self.link.publish(protocol.reported_topic(self.device),
                                      protocol.encode(reported), retain=True)
            elif topic.kind == "$state":
                self._check_own_state(message)
            elif topic.kind in self._routes:
                self._routes[topic.kind](topic, message)
            else:
                raise protocol.ProtocolError(f"no handler for {message.topic[:120]}")
        except protocol.ProtocolError as exc:
            log.error("message_rejected topic=%s error=%s", message.topic[:120], exc)

    def _check_own_state(self, message: Inbound) -> None:
        """Re-assert presence when a Will from an earlier connection overwrote it.

        Retained copies arrive on subscribing, before this connection's own `ready`, and say
        nothing about it; only a live message with another session counter is a stale Will.
        """
        if message.retain or self._stop.is_set() or not self.link.connected:
            return
        try:
            state = protocol.decode(message.payload, protocol.DeviceState)
        except protocol.ProtocolError:
            state = None
        if state is None or state.seq != self.seq:
            log.warning("state_reasserted device=%s seen=%s seq=%d", self.device,
                        None if state is None else f"{state.state}/{state.seq}", self.seq)
            self._publish_state("ready")

    # -- buttons and config ----------------------------------------------------------------------

    def _button(self, name: str) -> None:
        if not protocol.is_button(name):
            log.error("button_unknown name=%s", name)
            return
        log.info("button_pressed device=%s button=%s", self.device, name)
        self.outbox.send(protocol.ButtonEvent(button=name))
        for hook in self._button_hooks:
            try:
                if hook(name):
                    break
            except Exception:
                log.exception("button_hook_failed button=%s", name)

    def _power_changed(self, lost: bool) -> None:
        """Mains lost or back (the UPS HAT's line): the controller learns the box is on battery."""
        log.warning("power_changed device=%s mains_lost=%s", self.device, lost)
        if lost:
            self.raise_alarm("mains-lost", "critical", "mains power lost; running on battery")
        else:
            self.raise_alarm("mains-lost", "info", "mains power restored", active=False)

    def raise_alarm(self, code: str, severity: str, message: str, active: bool = True) -> None:
        self.outbox.send(protocol.AlarmEvent(code=code, severity=severity,  # type: ignore[arg-type]
                                             message=message, active=active))

    def _apply_remote_config(self, config: protocol.RemoteConfig) -> None:
        if config.telemetry_interval is not None:
            self.telemetry.set_interval(config.telemetry_interval)
        else:
            self.telemetry.set_interval(self.config.telemetry.interval)
        logs.set_level(config.log_level or self.config.log.level)

    # -- commands --------------------------------------------------------------------------------

    async def _cmd_ping(self, args: dict[str, Any]) -> Any:
        protocol.convert(args, protocol.NoArgs)
        return {"pong": protocol.now_ms(), "seq": self.seq}

    async def _cmd_status(self, args: dict[str, Any]) -> Any:
        protocol.convert(args, protocol.NoArgs)
        health = await self.telemetry.read()
        status: dict[str, Any] = {
            "device": self.device,
            "firmware": __version__,
            "board": self.profile.name,
            "seq": self.seq,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "connected": self.link.connected,
            "outbox": len(self.outbox),
            "leds": self.panel.led_states(),
            "desired_version": self.shadow.version,
            "config": protocol.to_builtins(self.shadow.config),
            "health": protocol.to_builtins(health),
            "commands": self.commands.names,
            "holds": sorted(self._holds),
            "on_battery": self.panel.power_lost(),
        }
        for name, provider in self._status.items():
            status[name] = provider()
        return status

    async def _cmd_restart(self, args: dict[str, Any]) -> Any:
        protocol.convert(args, protocol.NoArgs)
        # Answer first; the restart happens once the response has gone out.
        asyncio.get_running_loop().call_later(0.2, self.request_stop, True)
        return {"restarting": True}

    async def _cmd_logs(self, args: dict[str, Any]) -> Any:
        wanted = protocol.convert(args, protocol.CollectLogsArgs)
        lines = logs.ring().tail(wanted.lines)
        budget, kept = protocol.MAX_PAYLOAD // 2, []
        for line in reversed(lines):
            budget -= len(line) + 4
            if budget < 0:
                break
            kept.append(line)
        return {"lines": kept[::-1], "truncated": len(kept) < len(lines)}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return uuid.uuid4().hex
