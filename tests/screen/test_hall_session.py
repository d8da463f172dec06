"""What the hall sees and hears through a real session: invitation, call, mute, after the call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from tests.screen.hall import display_of, drawn, hall_box, luma, tags_on_screen
from tests.sessions.points import hashes, point_name, points, session_controller
from tests.support import eventually
from tiepdan.board.audio.synthetic import RingSpeaker, dominant_tones
from tiepdan.board.camera.tag import label_hash, read_tag
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.screen.screens import RED
from tiepdan.firmware.screen.state import ScreenState
from tiepdan.tools.broker import Mosquitto


def red_pixels(frame: np.ndarray, rows: slice, cols: slice) -> int:  # type: ignore[type-arg]
    """Pixels of the badges' red (blended over the picture, so only roughly RED)."""
    region = frame[rows, cols].astype(np.int16)
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    return int(((r > RED[0] - 60) & (g < RED[1] + 50) & (b < RED[2] + 50)).sum())


async def shown_within(agent: Agent, since: float, condition: Callable[[ScreenState], bool],
                       what: str, timeout: float) -> float:
    """Seconds from `since` until the display showed a frame for a state meeting `condition`."""
    display = display_of(agent)

    def done() -> bool:
        state = agent.screen.state
        at = display.shown_at()
        return state is not None and at is not None and at >= since and condition(state)
    await eventually(done, timeout, interval=0.01, what=what)
    at = display.shown_at()
    assert at is not None
    return at - since


async def test_the_hall_sees_the_invitation_the_call_its_badges_and_the_end(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with session_controller(tmp_path, broker) as controller, \
            points(tmp_path, broker, ["sc-host"]) as hosts, \
            hall_box(tmp_path, broker, "sc-1") as box:
        await eventually(lambda: controller.registry.get("sc-1") and
                         controller.registry.get("sc-host"), 10, what="both boxes registered")
        display = display_of(box)
        await eventually(lambda: box.screen.state is not None and box.screen.state.kind == "idle",
                         10, what="the idle screen")
        assert np.array_equal(display.latest(), drawn(box)), "idle screen not as drawn in vi"

        await controller.sessions.open("sc-host", ["sc-1"])
        await eventually(lambda: box.call.state == "invited", 10, interval=0.005,
                         what="the invitation")
        invited = time.monotonic()
        latency = await shown_within(box, invited, lambda s: s.kind == "invited",
                                 "the invited screen", 5)
        assert latency < 1.0, f"invited screen after {latency:.2f} s"
        assert np.array_equal(display.latest(), drawn(box)), "invited screen not as drawn in vi"
        assert box.screen.state is not None and box.screen.state.inviter == "UBND sc-host"

        # The chime rings, and again, until the officer answers.
        await eventually(lambda: box.screen.sounds.played.count("chime") >= 2, 10,
                         what="the chime repeated")
        speaker = box.screen.sounds.speaker
        assert isinstance(speaker, RingSpeaker)
        tones = dominant_tones(speaker.samples(), speaker.rate)
        assert any(abs(t - 988) < 10 for t in tones) and any(abs(t - 784) < 10 for t in tones), \
            tones

        if hosts["sc-host"].call.state == "invited":
            await asyncio.to_thread(hosts["sc-host"].panel.press, "call")  # type: ignore[attr-defined]
        await asyncio.to_thread(box.panel.press, "call")  # type: ignore[attr-defined]
        await eventually(lambda: box.call.state == "live", 30, what="the box live")
        chimes = box.screen.sounds.played.count("chime")

        # The composed picture is on screen, letterboxed, with the host's and its own tile.
        expected = hashes(["sc-host", "sc-1"])
        await eventually(lambda: tags_on_screen(box).get("sc-host") == expected["sc-host"], 20,
                         what="the host's tag on the hall's screen")
        renderer = box.screen.renderer
        assert renderer is not None and renderer.placement is not None
        place = renderer.placement
        assert (place.width, place.height) == (1024, 576) and place.y == 96, place
        frame = display.latest()
        assert frame is not None
        assert not frame[: place.y, 1024 // 3: 2 * 1024 // 3].any(), "top bar is not black"
        assert not frame[place.y + place.height:, 1024 // 2: 3 * 1024 // 4].any(), \
            "bottom bar is not black"
        assert "join" in box.screen.sounds.played
        await asyncio.sleep(1.5)
        assert box.screen.sounds.played.count("chime") <= chimes + 1, "chime after answering"

        # The self-view shows the box's own camera.
        async def own_camera() -> bool:
            at, current = renderer.self_view_at, display.latest()
            if at is None or current is None:
                return False
            tag = read_tag(luma(current)[at.y:at.y + at.height, at.x:at.x + at.width])
            return tag is not None and tag.label_hash == label_hash(point_name("sc-1"))
        await eventually(own_camera, 10, what="the self-view with the box's own tag")

        # A picture the screen cannot show (as a broken decoder might hand over) is dropped.
        tiny = av.VideoFrame.from_ndarray(np.zeros((12, 8), dtype=np.uint8), format="yuv420p")
        # Newest wins on the way to the screen: a real frame right behind it may overtake one
        # copy, so it keeps coming until the renderer has met it.
        async def odd_frames() -> None:
            while True:
                box.call.received_video.publish(tiny)
                await asyncio.sleep(0.02)
        feeder = asyncio.ensure_future(odd_frames())
        try:
            await eventually(lambda: renderer.dropped >= 1, 10, what="the odd frame dropped")
        finally:
            feeder.cancel()
        assert box.call.state == "live"
        shown = display.shown
        await eventually(lambda: display.shown > shown + 5 and
                         tags_on_screen(box).get("sc-host") == expected["sc-host"], 10,
                         what="the call on screen after the odd frame")

        # Mute: the badge within a second of the button, and a tone.
        badges = (slice(place.y + place.height, 768), slice(0, 1024 // 2))  # the bottom bar
        before = red_pixels(display.latest(), *badges)  # type: ignore[arg-type]
        await asyncio.to_thread(box.panel.press, "mute")  # type: ignore[attr-defined]
        pressed = time.monotonic()
        latency = await shown_within(box, pressed, lambda s: s.muted, "the mute badge", 5)
        assert latency < 1.0, f"mute badge after {latency:.2f} s"
        after = red_pixels(display.latest(), *badges)  # type: ignore[arg-type]
        assert after > before + 2000, (before, after)
        await eventually(lambda: "mute_on" in box.screen.sounds.played, 5, what="mute tone")
        await asyncio.to_thread(box.panel.press, "mute")  # type: ignore[attr-defined]
        await shown_within(box, time.monotonic(), lambda s: not s.muted, "no mute badge", 5)
        await eventually(lambda: "mute_off" in box.screen.sounds.played, 5, what="unmute tone")

        # End: the box leaves, says so, and goes back to idle once nothing is left to upload.
        await asyncio.to_thread(box.panel.press, "end")  # type: ignore[attr-defined]
        await shown_within(box, time.monotonic(), lambda s: s.kind == "after",
                           "the after-call screen", 10)
        assert np.array_equal(display.latest(), drawn(box))
        await eventually(lambda: "leave" in box.screen.sounds.played, 5, what="leave tone")
        await shown_within(box, time.monotonic(), lambda s: s.kind == "idle",
                           "the idle screen again", 10)
        assert box.screen._picture is None, "still subscribed to the composed picture"


async def test_after_the_call_the_hall_sees_the_upload_then_all_saved(
        tmp_path: Path, broker: Mosquitto) -> None:
    """A box that records (the archive's recipients, the controller's key) shows the recording
    badge in the call, then its upload's progress, then "all saved", then idle again."""
    from tests.recording.arc_support import enroll
    from tests.sessions.points import controller_config
    from tests.support import init_ca, running_controller

    config = controller_config(tmp_path, broker)
    init_ca(config)  # the box listener, where boxes upload, needs the provisioning CA
    async with running_controller(config) as controller, \
            points(tmp_path, broker, ["sc-rhost"]):
        enroll(controller, tmp_path / "sc-rec", "sc-rec")
        async with hall_box(tmp_path, broker, "sc-rec", recording={
                "archive_url": controller.boxes.url, "segment_seconds": 1.0,
                "upload_retry_max": 0.5}, screen={"after_seconds": 3.0}) as box:
            await eventually(lambda: box.recipients.current() is not None, 20,
                             what="the archive's recipients on the box")
            await eventually(lambda: controller.registry.get("sc-rec") and
                             controller.registry.get("sc-rhost"), 10, what="registered")
            await controller.sessions.open("sc-rhost", ["sc-rec"], auto_join=True)
            await eventually(lambda: box.screen.state is not None and
                             box.screen.state.kind == "call" and box.screen.state.recording, 30,
                             what="the recording badge in the call")
            await eventually(lambda: len(list((box.config.recording_dir).glob("*/*.age")))
                             >= 3, 30, what="a few sealed segments")
            seen: list[int | None] = []

            async def watch() -> None:
                while True:
                    state = box.screen.state
                    if state is not None and state.kind == "after" and \
                            (not seen or seen[-1] != state.upload_percent):
                        seen.append(state.upload_percent)
                    await asyncio.sleep(0.02)
            watcher = asyncio.ensure_future(watch())
            try:
                await asyncio.to_thread(box.panel.press, "end")  # type: ignore[attr-defined]
                await eventually(lambda: seen and seen[-1] == 100, 60,
                                 what="all saved on the after-call screen")
                assert np.array_equal(display_of(box).latest(), drawn(box))
                await eventually(lambda: box.screen.state is not None and
                                 box.screen.state.kind == "idle", 20,
                                 what="idle once everything is saved")
            finally:
                watcher.cancel()
            assert all(p is not None for p in seen), seen
            assert seen == sorted(seen), f"progress went backwards: {seen}"
