"""A quick check that the box's hardware works, for first boot and the OTA health check.

It exercises each part the way a session will (a real frame, real audio, the panel's pins) and
reports every part, so one broken part does not hide the state of the others.

On site, with the agent stopped: `python -m tiepdan.board.selftest --interactive` also lights
every LED and waits for the technician to press each button.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np

from tiepdan.board.audio import FRAME_SECONDS, open_microphone, open_speaker
from tiepdan.board.camera import open_camera
from tiepdan.board.errors import BoardError
from tiepdan.board.panel import Panel
from tiepdan.board.profile import BUTTONS, LEDS, BoardProfile, load_profile

__all__ = ["PartResult", "SelfTestReport", "main", "run_selftest", "walk_panel"]

log = logging.getLogger(__name__)

MIC_FRAMES = 5


@dataclass(frozen=True)
class PartResult:
    """`detail` says what was seen, or what went wrong."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class SelfTestReport:
    profile: str
    ok: bool
    parts: tuple[PartResult, ...]

    def part(self, name: str) -> PartResult:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


async def run_selftest(
    profile: BoardProfile, panel: Panel | None, *, label: str, timeout: float = 5.0
) -> SelfTestReport:
    """Check camera, microphone, speaker and (if given) the panel; never raises for a fault."""
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("camera", lambda: _camera(profile, label)),
        ("microphone", lambda: _microphone(profile, label)),
        ("speaker", lambda: _speaker(profile)),
        ("panel", lambda: _panel(panel)),
    ]
    parts = []
    for name, check in checks:
        try:
            async with asyncio.timeout(timeout):
                result = PartResult(name, True, await check())
        except TimeoutError:
            result = PartResult(name, False, f"no answer within {timeout:g} s")
        except Exception as exc:  # a self-test reports faults; it must not become one
            result = PartResult(name, False, f"{type(exc).__name__}: {exc}")
        log.info("selftest_part part=%s ok=%s detail=%s", name, result.ok, result.detail)
        parts.append(result)
    report = SelfTestReport(profile.name, all(p.ok for p in parts), tuple(parts))
    log.info("selftest_done profile=%s ok=%s", profile.name, report.ok)
    return report


async def _camera(profile: BoardProfile, label: str) -> str:
    camera = open_camera(profile.camera, label=label)
    wants_hardware = profile.video_encoder == "picamera2-h264"
    if wants_hardware and not camera.hardware_encoder:
        raise RuntimeError(
            f"profile {profile.name} expects the hardware H.264 encoder, which this board lacks "
            "(a Pi 5 needs profile rpi5)"
        )
    async with camera:
        frame = await camera.read()
        if (frame.width, frame.height) != (camera.width, camera.height):
            raise RuntimeError(
                f"got {frame.width}x{frame.height}, wanted {camera.width}x{camera.height}"
            )
        detail = f"{frame.width}x{frame.height} {frame.format.name} frame"
        if camera.hardware_encoder:
            packet = await camera.read_encoded()
            detail += f", H.264 packet of {packet.size} bytes"
    return detail


async def _microphone(profile: BoardProfile, label: str) -> str:
    async with open_microphone(profile.audio, label=label) as microphone:
        frames: list[av.AudioFrame] = [await microphone.read() for _ in range(MIC_FRAMES)]
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
    rms = math.sqrt(float(np.mean(samples**2))) / 32768
    level = f"{20 * math.log10(rms):.0f} dBFS" if rms > 0 else "silence"
    return f"{samples.size} samples at {microphone.rate} Hz, level {level}"


async def _speaker(profile: BoardProfile) -> str:
    # Silence: the check must not startle a commune office.
    spec = profile.audio
    samples = round(spec.rate * FRAME_SECONDS)
    frame = av.AudioFrame.from_ndarray(
        np.zeros((1, samples), np.int16), format="s16", layout="mono"
    )
    frame.sample_rate = spec.rate
    async with open_speaker(spec) as speaker:
        for _ in range(MIC_FRAMES):
            await speaker.write(frame)
    return f"played {MIC_FRAMES * FRAME_SECONDS * 1000:.0f} ms of silence"


async def _panel(panel: Panel | None) -> str:
    if panel is None:
        return "not checked (no panel given)"
    stuck = [name for name in BUTTONS if panel.is_pressed(name)]
    if stuck:
        raise RuntimeError(f"button(s) {', '.join(stuck)} read pressed: stuck or shorted?")
    lit = [name for name in LEDS if panel.led_is_lit(name)]
    power = {None: "no power-fail input", True: "on battery", False: "on mains"}[panel.power_lost()]
    return f"buttons released, LEDs lit: {', '.join(lit) or 'none'}, {power}"


async def walk_panel(panel: Panel, *, timeout: float = 30.0) -> tuple[PartResult, ...]:
    """Light every LED, then wait for a person to press each button in turn."""
    loop = asyncio.get_running_loop()
    pressed: asyncio.Queue[str] = asyncio.Queue()

    def on_button(name: str) -> None:  # gpiozero's thread
        loop.call_soon_threadsafe(pressed.put_nowait, name)

    panel.on_button(on_button)
    for led in LEDS:
        panel.set_led(led, "on")
    log.info("selftest_prompt check=all_leds_lit leds=%s", ",".join(LEDS))
    results = []
    for button in BUTTONS:
        log.info("selftest_prompt press=%s", button)
        try:
            async with asyncio.timeout(timeout):
                while (name := await pressed.get()) != button:
                    log.warning("selftest_unexpected_button wanted=%s got=%s", button, name)
            result = PartResult(f"button.{button}", True, "pressed")
        except TimeoutError:
            result = PartResult(f"button.{button}", False, f"not pressed within {timeout:g} s")
        log.info("selftest_part part=%s ok=%s detail=%s", result.name, result.ok, result.detail)
        results.append(result)
    for led in LEDS:
        panel.set_led(led, "off")
    return tuple(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Technician's self-test; exit status 0 when every part works."""
    parser = argparse.ArgumentParser(prog="python -m tiepdan.board.selftest", description=__doc__)
    parser.add_argument("--profile", default="auto", help="board profile (default: detect)")
    parser.add_argument("--label", default=socket.gethostname(), help="name on the test picture")
    parser.add_argument(
        "--interactive", action="store_true", help="also check LEDs and buttons by hand"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    async def run() -> bool:
        profile = load_profile(args.profile)
        with Panel(profile) as panel:
            report = await run_selftest(profile, panel, label=args.label)
            walked = await walk_panel(panel) if args.interactive else ()
        return report.ok and all(part.ok for part in walked)

    try:
        return 0 if asyncio.run(run()) else 1
    except BoardError as exc:
        log.error("selftest_failed error=%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
