"""Presence against a real Mosquitto: birth, clean stop, kill -9, stale Will, broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.tools.broker import Mosquitto


async def test_birth_then_clean_stop(tmp_path: Path, broker: Mosquitto,
                                     controller: Controller) -> None:
    config = make_agent_config(tmp_path, broker, "xa-nghi-loc",
                               device={"name": "UBND xã Nghi Lộc", "commune": "17500"})
    async with running_agent(config) as box:
        device = await eventually(lambda: controller.registry.get("xa-nghi-loc"),
                                  what="the birth at the controller")
        await eventually(lambda: device.online and device.name == "UBND xã Nghi Lộc",
                         what="the box online with its point name")
        assert device.commune == "17500"
        assert device.board == "sim"
        assert device.seq == box.agent.seq
        assert "commands" in device.capabilities
        await eventually(lambda: device.health is not None, what="a health report")
        assert device.health is not None and device.health["disk_total_bytes"] > 0
    await eventually(lambda: device.state == "disconnected",
                     what="the clean stop recorded as disconnected, not lost")


async def test_kill_9_shows_offline_within_keepalive(
        tmp_path: Path, broker: Mosquitto, controller: Controller,
        agent_process: Callable[..., AgentProcess]) -> None:
    keepalive = 2
    box = agent_process(write_agent_config(tmp_path, broker, "xa-dien-chau",
                                           mqtt={"keepalive": keepalive}))
    device = await eventually(lambda: (d := controller.registry.get("xa-dien-chau")) and
                              d.online and d, timeout=20, what="the box online")
    killed = time.monotonic()
    box.kill()
    await eventually(lambda: device.state == "lost", timeout=1.5 * keepalive + 1,
                     what="the Last Will")
    assert time.monotonic() - killed <= 1.5 * keepalive + 0.5


async def test_network_silence_shows_offline_by_broker_keepalive(
        tmp_path: Path, broker: Mosquitto, controller: Controller,
        agent_process: Callable[..., AgentProcess]) -> None:
    """A box that stops answering without closing its socket (a cut cable): only the broker's
    keepalive can notice. SIGSTOP freezes the process with its socket open. MQTT says 1.5 x
    keepalive; Debian's Mosquitto 2.0.11 checks on a coarse tick and was measured here at
    2.1-2.2 x (4.4 s at keepalive 2, 10.4 s at 5), so the bound is 3 x."""
    import signal

    keepalive = 2
    box = agent_process(write_agent_config(tmp_path, broker, "xa-yen-thanh",
                                           mqtt={"keepalive": keepalive}))
    device = await eventually(lambda: (d := controller.registry.get("xa-yen-thanh")) and
                              d.online and d, timeout=20, what="the box online")
    assert box.proc is not None
    box.proc.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        await eventually(lambda: device.state == "lost", timeout=3 * keepalive,
                         what="the Last Will after keepalive expiry")
        assert time.monotonic() - frozen >= keepalive, "lost before the keepalive ran out"
    finally:
        box.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: device.online, timeout=10, what="the box back after thawing")


async def test_stale_will_never_marks_a_reconnected_box_offline(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    config = make_agent_config(tmp_path, broker, "xa-quynh-luu")
    async with running_agent(config) as box, Observer(broker, "test-observer") as obs:
        device = await eventually(lambda: (d := controller.registry.get("xa-quynh-luu")) and
                                  d.online and d, what="the box online")
        current = box.agent.seq
        # What the broker publishes when an older connection's Will fires late.
        stale = protocol.DeviceState(state="lost", seq=current - 1 if current else 99,
                                     ts=protocol.now_ms())
        await obs.link.publish(protocol.state_topic("xa-quynh-luu"), protocol.encode(stale),
                               retain=True)
        await asyncio.sleep(0.5)
        assert device.online, "a stale death marked the box offline"
        assert device.seq == current

        # The box also re-asserts the retained state, so a controller starting later agrees.
        await obs.link.subscribe((protocol.state_topic("xa-quynh-luu"), 1))

        def retained_ready() -> bool:
            states = [protocol.decode(m.payload, protocol.DeviceState)
                      for m in obs.on(protocol.state_topic("xa-quynh-luu")) if m.retain]
            return bool(states) and states[-1].state == "ready" and states[-1].seq == current

        await eventually(retained_ready, what="the retained state re-asserted as ready")


async def test_broker_restart_rebirth_and_no_event_lost(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    names = [f"xa-{n}" for n in ("a", "b", "c")]
    async with (running_agent(make_agent_config(tmp_path, broker, names[0])) as a,
                running_agent(make_agent_config(tmp_path, broker, names[1])) as b,
                running_agent(make_agent_config(tmp_path, broker, names[2])) as c):
        boxes = [a, b, c]
        await eventually(lambda: all((d := controller.registry.get(n)) and d.online
                                     for n in names), what="all boxes online")
        seqs = {n: controller.registry.get(n).seq for n in names}  # type: ignore[union-attr]
        sent_before = [box.agent.outbox.send(protocol.ButtonEvent(button="call"))
                       for box in boxes]
        await eventually(lambda: len(controller.registry.events(limit=1000)) >= 3,
                         what="events before the restart")

        broker.stop()
        await eventually(lambda: not any(box.agent.link.connected for box in boxes),
                         what="boxes noticing the broker is gone")
        assert all(box.agent.panel.led_state("online") == "blink" for box in boxes)
        # Raised while the broker is down: queued on disk and in the link.
        sent_offline = [box.agent.outbox.send(protocol.ButtonEvent(button="mute"))
                        for box in boxes for _ in range(3)]
        assert all(len(box.agent.outbox) == 3 for box in boxes)

        broker.start()
        restarted = time.monotonic()
        await eventually(
            lambda: all(controller.registry.get(n).seq > seqs[n]  # type: ignore[union-attr]
                        and controller.registry.get(n).online  # type: ignore[union-attr]
                        for n in names),
            timeout=5.0, what="every box back with a fresh birth within 5 s")
        assert time.monotonic() - restarted <= 5.0

        wanted = set(sent_before) | set(sent_offline)
        await eventually(lambda: wanted <= {e["event_id"] for e in
                                            controller.registry.events(limit=1000)},
                         what="every QoS 1 event delivered")
        ids = [e["event_id"] for e in controller.registry.events(limit=1000)]
        assert len(ids) == len(set(ids)) == len(wanted), "an event was stored twice"
        await eventually(lambda: all(len(box.agent.outbox) == 0 for box in boxes),
                         what="outboxes emptied by PUBACKs")
        assert all(box.agent.panel.led_state("online") == "on" for box in boxes)


async def test_events_survive_an_agent_crash_while_offline(
        tmp_path: Path, broker: Mosquitto, controller: Controller,
        agent_process: Callable[..., AgentProcess]) -> None:
    """Events written to the outbox by a box that then dies before the broker acked them are
    sent by the next run of the agent."""
    config = make_agent_config(tmp_path, broker, "xa-crash")
    async with running_agent(config) as box:
        await eventually(lambda: (d := controller.registry.get("xa-crash")) and d.online,
                         what="online")
        broker.stop()
        await eventually(lambda: not box.agent.link.connected, what="offline")
        ids = [box.agent.outbox.send(protocol.AlarmEvent(code="power-fail", severity="critical",
                                                         message="mains lost"))
               for _ in range(2)]
        box.task.cancel()  # the process dies: nothing is flushed, nothing said goodbye
        with contextlib.suppress(asyncio.CancelledError):
            await box.task
    broker.start()
    path = write_agent_config(tmp_path, broker, "xa-crash")
    agent_process(path)
    await eventually(lambda: set(ids) <= {e["event_id"] for e in
                                          controller.registry.events("xa-crash")},
                     timeout=20, what="the events from the crashed run")
