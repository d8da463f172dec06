"""The front panel end to end: a press on the mock GPIO reaches the controller; LEDs follow."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support import eventually, make_agent_config, running_agent
from tiepdan.controller.service import Controller
from tiepdan.tools.broker import Mosquitto


async def test_button_presses_reach_the_controller_in_order(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    async with running_agent(make_agent_config(tmp_path, broker, "xa-panel")) as box:
        await eventually(lambda: (d := controller.registry.get("xa-panel")) and d.online,
                         what="online")
        for name in ("call", "mute", "mute", "end"):
            await asyncio.to_thread(box.agent.panel.press, name)
        await eventually(lambda: len(controller.registry.events("xa-panel")) == 4,
                         what="four button events")
        presses = [e["data"]["button"] for e in reversed(controller.registry.events("xa-panel"))]
        assert presses == ["call", "mute", "mute", "end"]


async def test_online_led_follows_the_connection(tmp_path: Path, broker: Mosquitto,
                                                 controller: Controller) -> None:
    async with running_agent(make_agent_config(tmp_path, broker, "xa-led")) as box:
        panel = box.agent.panel
        await eventually(lambda: panel.led_state("online") == "on", what="steady online LED")
        broker.stop()
        await eventually(lambda: panel.led_state("online") == "blink",
                         what="online LED blinking while the broker is away")
        broker.start()
        await eventually(lambda: panel.led_state("online") == "on", timeout=10,
                         what="steady online LED after reconnecting")
        # The pin itself, not just the remembered pattern.
        assert panel.led_is_lit("online")
        assert not panel.led_is_lit("in_call")


async def test_mains_loss_and_return_reach_the_controller_as_an_alarm(
        tmp_path: Path, broker: Mosquitto, controller: Controller) -> None:
    async with running_agent(make_agent_config(tmp_path, broker, "xa-ups")) as box:
        await eventually(lambda: (d := controller.registry.get("xa-ups")) and d.online,
                         what="online")
        panel = box.agent.panel
        await asyncio.to_thread(panel.simulate_power, True)
        alarms = await eventually(lambda: [e for e in controller.registry.events("xa-ups")
                                           if e["kind"] == "alarm"], what="the mains alarm")
        assert alarms[0]["data"]["code"] == "mains-lost"
        assert alarms[0]["data"]["active"] is True and alarms[0]["data"]["severity"] == "critical"
        status = await controller.rpc.request("xa-ups", "get-status", timeout=5)
        assert status.ok and status.result["on_battery"] is True

        await asyncio.to_thread(panel.simulate_power, False)
        await eventually(lambda: len([e for e in controller.registry.events("xa-ups")
                                      if e["kind"] == "alarm"]) == 2, what="the all-clear")
        latest = controller.registry.events("xa-ups")[0]["data"]
        assert latest["code"] == "mains-lost" and latest["active"] is False
