"""Commands and desired state against a real Mosquitto, controller and agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from tests.support import (
    AgentProcess,
    Observer,
    eventually,
    make_agent_config,
    running_agent,
    write_agent_config,
)
from tiepdan.controller.cli.client import ApiClient
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto


async def online(controller: Controller, device: str) -> None:
    await eventually(lambda: (d := controller.registry.get(device)) and d.online,
                     timeout=20, what=f"{device} online")


async def test_round_trip_of_every_command(tmp_path: Path, broker: Mosquitto,
                                           controller: Controller) -> None:
    async with running_agent(make_agent_config(tmp_path, broker, "xa-a")) as box:
        await online(controller, "xa-a")
        ping = await controller.rpc.request("xa-a", "ping", timeout=5)
        assert ping.ok and ping.result["seq"] == box.agent.seq

        status = await controller.rpc.request("xa-a", "get-status", timeout=5)
        assert status.ok
        assert status.result["device"] == "xa-a"
        assert status.result["leds"]["online"] == "on"
        assert status.result["health"]["disk_total_bytes"] > 0
        assert {"ping", "get-status", "restart-agent", "collect-logs"} <= set(
            status.result["commands"])

        logs = await controller.rpc.request("xa-a", "collect-logs", {"lines": 20}, timeout=5)
        assert logs.ok and 0 < len(logs.result["lines"]) <= 20
        assert any("command_start" in line for line in logs.result["lines"])

        unknown = await controller.rpc.request("xa-a", "self-destruct", timeout=5)
        assert not unknown.ok and unknown.error is not None
        assert unknown.error.code == "unknown_command"

        bad = await controller.rpc.request("xa-a", "collect-logs", {"lines": "all"}, timeout=5)
        assert not bad.ok and bad.error is not None and bad.error.code == "bad_request"
        assert "lines" in bad.error.message


async def test_command_through_the_admin_api(tmp_path: Path, broker: Mosquitto,
                                             controller: Controller) -> None:
    async with running_agent(make_agent_config(tmp_path, broker, "xa-api")):
        await online(controller, "xa-api")
        client = ApiClient.from_config(controller.config)
        response = await asyncio.to_thread(client.call, "POST",
                                           "/api/devices/xa-api/commands/ping", {})
        assert response["ok"] is True
        assert {d["id"] for d in await asyncio.to_thread(client.get, "/api/devices")} == {
            "xa-api"}
        wrong = ApiClient(client.url, "not-the-token")
        try:
            await asyncio.to_thread(wrong.get, "/api/devices")
        except Exception as exc:
            assert "401" in str(exc)
        else:
            raise AssertionError("the API answered without the admin token")


async def test_redelivered_command_runs_once(tmp_path: Path, broker: Mosquitto,
                                             controller: Controller) -> None:
    """QoS 1 may deliver a command twice; the second copy gets the first answer back."""
    async with (running_agent(make_agent_config(tmp_path, broker, "xa-b")) as box,
                Observer(broker, "test-requester") as obs):
        await online(controller, "xa-b")
        reply_to = protocol.response_topic("xa-b", "central")
        await obs.link.subscribe((reply_to, 1))
        runs = 0
        original = box.agent.commands._handlers["ping"]

        async def counting(args: dict[str, object]) -> object:
            nonlocal runs
            runs += 1
            return await original(args)

        box.agent.commands.register("ping", counting)
        command = protocol.Command(id="same-id-twice", ts=protocol.now_ms())
        for _ in range(2):
            await obs.link.publish(protocol.command_topic("xa-b", "ping"),
                                   protocol.encode(command), response_topic=reply_to,
                                   correlation_data=b"c1")
        await eventually(lambda: len(obs.on(reply_to)) == 2, what="two answers")
        answers = [protocol.decode(m.payload, protocol.Response) for m in obs.on(reply_to)]
        assert runs == 1
        assert answers[0] == answers[1]
        assert all(m.correlation_data == b"c1" for m in obs.on(reply_to))


async def test_response_topic_outside_the_box_is_refused(tmp_path: Path, broker: Mosquitto,
                                                         controller: Controller) -> None:
    async with (running_agent(make_agent_config(tmp_path, broker, "xa-c")) as box,
                Observer(broker, "test-attacker") as obs):
        await online(controller, "xa-c")
        await obs.link.subscribe(("#", 0))
        for reply_to in ("tiepdan/v1/d/xa-other/res/central", "elsewhere/sink",
                         "tiepdan/v1/d/xa-c/res/+", "tiepdan/v1/d/xa-c/cmd/ping"):
            command = protocol.Command(id=protocol.new_id(), ts=protocol.now_ms())
            await obs.link.publish(protocol.command_topic("xa-c", "ping"),
                                   protocol.encode(command), response_topic=reply_to)
        await asyncio.sleep(0.5)
        answered = [m for m in obs.messages
                    if m.topic in ("tiepdan/v1/d/xa-other/res/central", "elsewhere/sink")]
        assert answered == []
        assert box.agent.link.connected


async def test_expired_command_never_runs(tmp_path: Path, broker: Mosquitto,
                                          controller: Controller,
                                          agent_process: Callable[..., AgentProcess]) -> None:
    """A command whose caller gave up is dropped by the broker, not run when the box returns."""
    path = write_agent_config(tmp_path, broker, "xa-d")
    box = agent_process(path)
    await online(controller, "xa-d")
    box.terminate()
    await eventually(lambda: not controller.registry.get("xa-d").online,  # type: ignore[union-attr]
                     what="box offline")
    short = await controller.rpc.request("xa-d", "restart-agent", timeout=1.0)
    assert not short.ok and short.error is not None and short.error.code == "timeout"
    await asyncio.sleep(1.5)  # past the message expiry the request carried
    waiting = asyncio.create_task(controller.rpc.request("xa-d", "ping", timeout=30))
    box = agent_process(path)
    answer = await waiting
    assert answer.ok, "a command sent while the box was away is delivered when it returns"
    log = box.output()
    assert "command=ping" in log
    assert "command=restart-agent" not in log


async def test_restart_agent_comes_back_with_a_new_birth(
        tmp_path: Path, broker: Mosquitto, controller: Controller,
        agent_process: Callable[..., AgentProcess]) -> None:
    box = agent_process(write_agent_config(tmp_path, broker, "xa-e"))
    await online(controller, "xa-e")
    device = controller.registry.get("xa-e")
    assert device is not None
    seq = device.seq
    answer = await controller.rpc.request("xa-e", "restart-agent", timeout=5)
    assert answer.ok
    await eventually(lambda: device.seq > seq and device.online, timeout=20,
                     what="a fresh birth after the restart")
    assert box.proc is not None and box.proc.poll() is None, "restart is in place (same PID)"
    assert "agent_reexec" in box.output()


async def test_desired_config_is_applied_and_reported(tmp_path: Path, broker: Mosquitto,
                                                      controller: Controller) -> None:
    config = make_agent_config(tmp_path, broker, "xa-f")
    async with running_agent(config) as box:
        await online(controller, "xa-f")
        device = controller.registry.get("xa-f")
        assert device is not None
        document = await controller.set_desired("xa-f", protocol.RemoteConfig(
            telemetry_interval=7, log_level="warning", tags=["pilot"],
            maintenance_window="01:00-04:00"))
        await eventually(lambda: (device.reported or {}).get("version") == document.version,
                         what="reported version")
        assert device.reported is not None
        assert device.reported["config"]["tags"] == ["pilot"]
        assert box.agent.telemetry.interval == 7
        assert "error" not in device.reported

    # The applied document survives a restart, before the box is even online again.
    async with running_agent(config, connect=False) as box:
        assert box.agent.shadow.version == document.version
        assert box.agent.telemetry.interval == 7


async def test_invalid_desired_is_reported_back_and_changes_nothing(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    async with (running_agent(make_agent_config(tmp_path, broker, "xa-g")) as box,
                Observer(broker, "test-bad-controller") as obs):
        await online(controller, "xa-g")
        await obs.link.publish(protocol.desired_topic("xa-g"),
                               b'{"version": 5, "ts": 1, "config": {"telemetry_interval": 0}}',
                               retain=True)
        device = controller.registry.get("xa-g")
        assert device is not None
        await eventually(lambda: (device.reported or {}).get("version") == 5,
                         what="the refusal reported")
        assert device.reported is not None
        assert "telemetry_interval" in device.reported["error"]
        assert box.agent.telemetry.interval == 1.0
