"""Test support shared by the suites: configs, running controller and agents, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import tomli_w
from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import Panel
from tiepdan.board.profile import load_profile
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.controller.identities import Identities
from tiepdan.controller.service import Controller
from tiepdan.controller.store import Database
from tiepdan.firmware.agent.agent import Agent, Exit
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.core.mqtt import Inbound, LinkSettings, MqttLink, TlsSettings, client_context
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.provisioning import dynsec
from tiepdan.provisioning.ca import cert_pem, new_key, serial_hex, write_key, write_public
from tiepdan.provisioning.material import Material, initialise
from tiepdan.provisioning.mosquitto import listener_text
from tiepdan.tools.broker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; fail the test with `what` when time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def agent_settings(tmp_path: Path, broker: Mosquitto, device_id: str,
                   **sections: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "device": {"id": device_id, "name": f"UBND {device_id}", "kind": "commune"},
        "board": {"profile": "sim"},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": False, "keepalive": 2,
                 "reconnect_min": 0.2, "reconnect_max": 1.0, "connect_timeout": 3.0},
        "telemetry": {"interval": 1.0},
        "state": {"dir": str(tmp_path / device_id)},
        "log": {"level": "debug"},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return settings


def make_agent_config(tmp_path: Path, broker: Mosquitto, device_id: str,
                      **sections: Any) -> AgentConfig:
    return msgspec.convert(agent_settings(tmp_path, broker, device_id, **sections), AgentConfig)


def write_agent_config(tmp_path: Path, broker: Mosquitto, device_id: str,
                       **sections: Any) -> Path:
    path = tmp_path / f"{device_id}.toml"
    path.write_text(tomli_w.dumps(agent_settings(tmp_path, broker, device_id, **sections)))
    return path


def database_settings(database: Path | str) -> dict[str, str]:
    """The `[database]` section for the `database` fixture's target: a PostgreSQL URL as it
    is; for SQLite the default (the file in data_dir)."""
    return {"url": database if isinstance(database, str) else ""}


def make_controller_config(tmp_path: Path, broker: Mosquitto,
                           **sections: Any) -> ControllerConfig:
    settings: dict[str, Any] = {
        "controller": {"id": "central", "data_dir": str(tmp_path / "controller")},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": False, "keepalive": 5,
                 "reconnect_min": 0.2, "reconnect_max": 1.0},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "boxes": {"host": "127.0.0.1", "port": 0},
        "provisioning": {"enroll_host": "127.0.0.1", "enroll_port": 0, "broker_reload": []},
        "registry": {"flush_interval": 0.2},
        "log": {"level": "debug"},
        # The tests decrypt what they archive; production sets archive.recipients instead.
        "archive": {"trial_identity": True},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return msgspec.convert(settings, ControllerConfig)


@contextlib.asynccontextmanager
async def running_controller(config: ControllerConfig) -> AsyncIterator[Controller]:
    controller = Controller(config)
    ready = asyncio.Event()
    task = asyncio.create_task(controller.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    await controller.link.wait_connected(10)
    if material_for(config).exists():  # boxes reach the archive and OTA only through it
        await asyncio.wait_for(controller.boxes.started.wait(), 10)
    try:
        yield controller
    finally:
        controller.request_stop()
        await asyncio.wait_for(task, 15)


def init_ca(config: ControllerConfig) -> Material:
    """`tiepdan-provision ca init` for a test controller (once): the box listener needs it."""
    material = material_for(config)
    if not material.exists():
        initialise(material, controller=config.controller.id, hosts=["127.0.0.1", "localhost"],
                   broker_port=config.mqtt.port, listen_host="127.0.0.1", cert_days=30,
                   crl_days=30)
    return material


def issue_box_tls(config: ControllerConfig, device: str,
                  state_dir: Path) -> tuple[TlsSettings, str]:
    """A box's client certificate from the test controller's CA, where enrollment puts it
    (`<state dir>/tls/`); returns the files and the serial, and records nothing."""
    material = init_ca(config)
    directory = state_dir / "tls"
    key = new_key()
    cert = material.authority().issue_client(key.public_key(), device, 30)
    write_key(directory / "device.key", key)
    write_public(directory / "device.pem", cert_pem(cert))
    write_public(directory / "ca.pem", material.authority().pem)
    return TlsSettings(ca_file=directory / "ca.pem", cert_file=directory / "device.pem",
                       key_file=directory / "device.key"), serial_hex(cert)


def admit_box(target: Controller | ControllerConfig, device: str, state_dir: Path
              ) -> TlsSettings:
    """What enrollment leaves behind, without the enrollment endpoint: the box's certificate
    under `<state dir>/tls/` and its signing key bound at the controller with that serial
    (straight into the database when the controller runs in another process)."""
    config = target.config if isinstance(target, Controller) else target
    tls, serial = issue_box_tls(config, device, state_dir)
    sign_key = Identity(state_dir).signing_public_raw()
    if isinstance(target, Controller):
        target.identities.bind(device, sign_key, cert_serial=serial)
    else:
        db = Database(config.controller_db)
        try:
            Identities(db).bind(device, sign_key, cert_serial=serial)
        finally:
            db.close()
    return tls


def box_http(tls: TlsSettings, **kwargs: Any) -> aiohttp.ClientSession:
    """An HTTP client that shows the box's certificate (what the uploader and OTA use)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(tls)),
                                 **kwargs)


class RunningAgent:
    def __init__(self, agent: Agent, task: asyncio.Task[Exit], factory: MockFactory) -> None:
        self.agent = agent
        self.task = task
        self.factory = factory

    async def stop(self) -> Exit:
        self.agent.request_stop()
        return await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, connect: bool = True,
                        profile_name: str = "sim") -> AsyncIterator[RunningAgent]:
    profile = load_profile(profile_name)
    factory = MockFactory()
    agent = Agent(config, profile=profile, panel=Panel(profile, pin_factory=factory))
    task = asyncio.create_task(agent.run())
    running = RunningAgent(agent, task, factory)
    try:
        if connect:
            await agent.link.wait_connected(10)
        yield running
    finally:
        if not task.done():
            await running.stop()


class AgentProcess:
    """An agent in its own process, for kill -9 and restart tests."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tiepdan.firmware", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Observer:
    """A third MQTT client on the real broker: sees what boxes and controller publish, injects
    what an attacker or a broken peer would."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.messages: list[Inbound] = []
        self.link = MqttLink(
            LinkSettings(host=broker.host, port=broker.port, client_id=client_id,
                         keepalive=5, session_expiry=0, reconnect_min=0.2, reconnect_max=1.0),
            on_message=self.messages.append,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        self._task = asyncio.create_task(self.link.run())
        await self.link.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def on(self, topic_prefix: str) -> list[Inbound]:
        return [m for m in self.messages if m.topic.startswith(topic_prefix)]


# -- mutual TLS (provisioning, issue 6) ----------------------------------------------------------


class SecureBroker:
    """A Mosquitto set up by provisioning's own code: the CA, the broker's and the controller's
    TLS material and the listener config of `tiepdan-provision ca init`, with debug logging on
    (where Mosquitto reports refused publishes) and a reload command the controller can run."""

    # The root CA's key as `ca init` writes it: encrypted, on "offline media".
    passphrase = b"correct horse battery staple"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.root_key = tmp_path / "offline" / "root.key"
        self.broker = Mosquitto(tmp_path / "broker")
        self.material = material_for(self.controller_config())
        initialise(self.material, controller="central", hosts=["127.0.0.1", "localhost"],
                   broker_port=self.broker.port, listen_host=self.broker.host, cert_days=30,
                   crl_days=30, debug_log=True, root_key=self.root_key,
                   passphrase=self.passphrase)
        self.broker.listeners = listener_text(self.material.broker, self.broker.port,
                                              self.broker.host, debug_log=True)

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    def controller_config(self, **sections: Any) -> ControllerConfig:
        merged: dict[str, Any] = {
            "mqtt": {"tls": True},
            "provisioning": {"broker_reload": self.broker.reload_command(),
                             "enroll_host": "127.0.0.1", "enroll_port": 0,
                             "renew_host": "127.0.0.1", "renew_port": 0,
                             "broker_host": "127.0.0.1"},
        }
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        return make_controller_config(self.tmp_path, self.broker, **merged)

    def issue(self, cn: str, directory: Path) -> TlsSettings:
        """A client certificate straight from the CA (what enrollment would have produced)."""
        key = new_key()
        cert = self.material.authority().issue_client(key.public_key(), cn, 30)
        write_key(directory / "device.key", key)
        write_public(directory / "device.pem", cert_pem(cert))
        write_public(directory / "ca.pem", self.material.authority().pem)
        return TlsSettings(ca_file=directory / "ca.pem", cert_file=directory / "device.pem",
                           key_file=directory / "device.key")

    def log(self) -> str:
        return self.broker.logfile.read_text(errors="replace")

    async def admit(self, *devices: str) -> None:
        """Give boxes their subscribe rules, as the controller does at enrollment."""
        cn = dynsec.admin_username("controller-central")
        tls = self.issue(cn, self.tmp_path / cn)
        assert tls.cert_file is not None and tls.key_file is not None
        admin = dynsec.Admin(self.host, self.port, tls.ca_file, tls.cert_file, tls.key_file,
                             client_id=cn)
        await asyncio.to_thread(admin.add_boxes, devices)


class TlsClient:
    """A raw MQTT client with a certificate: a box as an attacker would drive it."""

    def __init__(self, broker: SecureBroker, client_id: str, tls: TlsSettings | None) -> None:
        self.messages: list[Inbound] = []
        self.link = MqttLink(
            LinkSettings(host=broker.host, port=broker.port, client_id=client_id, keepalive=5,
                         session_expiry=0, reconnect_min=0.2, reconnect_max=1.0,
                         connect_timeout=3.0, tls=tls),
            on_message=self.messages.append,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TlsClient:
        self._task = asyncio.create_task(self.link.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def on(self, topic_prefix: str) -> list[Inbound]:
        return [m for m in self.messages if m.topic.startswith(topic_prefix)]
