from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import Panel
from tiepdan.board.profile import LEDS, BoardProfile, CameraSpec
from tiepdan.board.selftest import main, run_selftest, walk_panel

MakePanel = Callable[..., tuple[Panel, MockFactory]]


async def test_simulated_box_passes(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, _ = make_panel(sim)
    panel.set_led("online", "on")
    report = await run_selftest(sim, panel, label="sim-01")
    assert report.ok
    assert report.profile == "sim"
    assert [p.name for p in report.parts] == ["camera", "microphone", "speaker", "panel"]
    assert all(p.ok for p in report.parts)
    assert "640x360" in report.part("camera").detail
    assert "dBFS" in report.part("microphone").detail
    assert "LEDs lit: online" in report.part("panel").detail
    assert "on mains" in report.part("panel").detail


async def test_without_a_panel_the_panel_is_not_checked(sim: BoardProfile) -> None:
    report = await run_selftest(sim, None, label="sim-01")
    assert report.ok
    assert "not checked" in report.part("panel").detail


async def test_a_stuck_button_fails_the_panel(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, factory = make_panel(sim)
    factory.pin(sim.buttons["end"]).drive_low()
    try:
        report = await run_selftest(sim, panel, label="sim-01")
    finally:
        factory.pin(sim.buttons["end"]).drive_high()
    assert not report.ok
    assert not report.part("panel").ok
    assert "end" in report.part("panel").detail
    assert report.part("camera").ok and report.part("microphone").ok


async def test_a_broken_camera_is_reported_and_the_rest_still_checked(sim: BoardProfile) -> None:
    broken = dataclasses.replace(
        sim, camera=CameraSpec("v4l2", "/dev/video-unplugged", 640, 360, 15)
    )
    report = await run_selftest(broken, None, label="sim-01")
    assert not report.ok
    camera = report.part("camera")
    assert not camera.ok
    assert "/dev/video-unplugged" in camera.detail
    assert report.part("microphone").ok
    assert report.part("speaker").ok


async def test_a_silent_part_times_out(sim: BoardProfile) -> None:
    # A real-time lavfi source that drops its first 2 s stands in for a camera that hangs
    # (FFmpeg blocks in av.open until the first frame, as with a stalled USB camera).
    device = "lavfi:nullsrc=size=64x64:rate=15,realtime,trim=start=2"
    hung = dataclasses.replace(sim, camera=CameraSpec("v4l2", device, 64, 64, 15))
    report = await run_selftest(hung, None, label="sim-01", timeout=0.5)
    assert not report.part("camera").ok
    assert "within 0.5 s" in report.part("camera").detail


async def test_walk_panel_waits_for_each_button(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, _ = make_panel(sim)
    lit_during_walk: list[bool] = []

    async def technician() -> None:
        for button in ["call", "end", "mute", "end"]:  # one wrong press on the way
            await asyncio.sleep(0.05)
            lit_during_walk.append(all(panel.led_is_lit(led) for led in LEDS))
            await asyncio.to_thread(panel.press, button, 0)

    results, _ = await asyncio.gather(walk_panel(panel, timeout=10), technician())
    assert [(r.name, r.ok) for r in results] == [
        ("button.call", True),
        ("button.mute", True),
        ("button.end", True),
    ]
    assert all(lit_during_walk)
    assert not any(panel.led_is_lit(led) for led in LEDS)


async def test_walk_panel_reports_a_dead_button(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, _ = make_panel(sim)

    async def technician() -> None:
        await asyncio.sleep(0.05)
        await asyncio.to_thread(panel.press, "call", 0)

    results, _ = await asyncio.gather(walk_panel(panel, timeout=0.3), technician())
    assert [(r.name, r.ok) for r in results] == [
        ("button.call", True),
        ("button.mute", False),
        ("button.end", False),
    ]


def test_command_line_self_test() -> None:
    assert main(["--profile", "sim", "--label", "site-check"]) == 0
    assert main(["--profile", "no-such-board"]) == 2
