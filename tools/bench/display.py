"""Display benchmark: the in-call screen at the composed rate, against a bare numpy copy.

What the box does for every composed picture the bridge sends (15 per second): convert and
scale the decoded yuv420p picture to RGB at its letterboxed place (one swscale pass), copy it
into the screen buffer, draw the self-view, blend the badges, and hand the frame to the display.
Measured per display mode (1280x720 and 1920x1080 by default), in the same run, alternating,
best of `--repeat`, in CPU time of this process (threads included):

- floor: a bare numpy copy of the same frames, already RGB at the display's size, into the same
  buffer (what any renderer must at least do);
- render: `CallRenderer.compose` from the decoded frames (composed picture 1280x720, self-view
  640x360, mute, recording and quality badges);
- render+show: the same, then `KmsDisplay.show` through SDL (pygame) on its offscreen driver: the
  blit and flip a box does on the KMSDRM driver, minus the page flip's wait for vblank.

CPU per frame times the composed rate is the share of one core the screen costs in a call; the
wall time of one frame is the latency the screen adds on top of decoding (goal: at most one
frame, 67 ms at 15 fps).

    python -m tiepdan.tools.bench.display --frames 90 --repeat 3

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import av
import numpy as np

from tiepdan.board.camera.synthetic import SyntheticCamera
from tiepdan.board.display.kmsdrm import KmsDisplay
from tiepdan.board.profile import CameraSpec
from tiepdan.firmware.screen.catalog import screen_translator
from tiepdan.firmware.screen.render import CallRenderer
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.state import ScreenState

COMPOSED = (1280, 720)
SELF_VIEW = (640, 360)


def frames(size: tuple[int, int], count: int, label: str) -> list[av.VideoFrame]:
    """Distinct decoded-like pictures (the synthetic camera's, with its moving strip and tag)."""
    camera = SyntheticCamera(CameraSpec("synthetic", "pattern", *size, 15), label=label)
    out = []
    for tick in range(count):
        camera.frames = tick
        out.append(av.VideoFrame.from_ndarray(camera.render(tick).copy(), format="yuv420p"))
    return out


def cpu() -> float:
    return time.process_time()


def run_floor(rgb: list[np.ndarray[Any, Any]], buffer: np.ndarray[Any, Any]) -> tuple[float,
                                                                                    list[float]]:
    walls = []
    start = cpu()
    for frame in rgb:
        began = time.perf_counter()
        buffer[:] = frame
        walls.append(time.perf_counter() - began)
    return (cpu() - start) / len(rgb), walls


def run_render(renderer: CallRenderer, pictures: list[av.VideoFrame],
               selves: list[av.VideoFrame], state: ScreenState,
               show: Any = None) -> tuple[float, list[float]]:
    walls = []
    start = cpu()
    for picture, own in zip(pictures, selves, strict=True):
        began = time.perf_counter()
        frame = renderer.compose(picture, own, state)
        if show is not None:
            show(frame)
        walls.append(time.perf_counter() - began)
    return (cpu() - start) / len(pictures), walls


def measure(mode: tuple[int, int], count: int, repeat: int, fps: int,
            display: KmsDisplay | None) -> dict[str, Any]:
    pictures = frames(COMPOSED, count, "Ban Tiếp công dân tỉnh Nghệ An")
    selves = frames(SELF_VIEW, count, "UBND xã Hưng Nguyên")
    renderer = CallRenderer(mode, Layouts(mode, screen_translator("vi")))
    width, height = mode
    # The floor copies the very same pictures, converted ahead to the display's size and format.
    rgb = [p.to_ndarray(format="rgb24", width=width, height=height) for p in pictures]
    state = ScreenState(kind="call", hall="UBND xã Hưng Nguyên", commune="17980",
                        device="xa-hung-nguyen", now=datetime.now(), muted=True, recording=True,
                        quality="good")
    def show(frame: np.ndarray[Any, Any]) -> None:
        # On the display's own thread, as the presenter does (SDL's context lives there).
        assert display is not None
        display._thread.submit(display._flip, frame).result()

    best: dict[str, tuple[float, list[float]]] = {}
    for _ in range(repeat):
        runs: dict[str, Callable[[], tuple[float, list[float]]]] = {
            "floor": lambda: run_floor(rgb, renderer.buffer),
            "render": lambda: run_render(renderer, pictures, selves, state)}
        if display is not None and display.mode == mode:
            runs["render+show"] = lambda: run_render(renderer, pictures, selves, state, show)
        for name, run in runs.items():
            result = run()
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    figures: dict[str, Any] = {"mode": f"{width}x{height}", "fps": fps, "frames": count}
    for name, (per_frame, walls) in best.items():
        figures[name] = {
            "cpu_ms_per_frame": round(per_frame * 1000, 2),
            "core_share_at_fps": round(per_frame * fps, 4),
            "wall_ms_p50": round(statistics.median(walls) * 1000, 2),
            "wall_ms_max": round(max(walls) * 1000, 2),
        }
    figures["ratio_render_to_floor"] = round(best["render"][0] / best["floor"][0], 1)
    return figures


async def open_offscreen(mode: tuple[int, int]) -> KmsDisplay | None:
    display = KmsDisplay(driver="offscreen", size=mode)
    try:
        await display.start()
    except Exception as exc:  # a host without pygame still gets the other figures
        print(f"render+show skipped: {exc}", file=sys.stderr)
        return None
    return display


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=90, help="pictures per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; best counts")
    parser.add_argument("--fps", type=int, default=15, help="the composed picture's rate")
    parser.add_argument("--modes", default="1280x720,1920x1080")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = []
    for text in args.modes.split(","):
        width, height = (int(v) for v in text.split("x"))
        mode = (width, height)
        display = asyncio.run(open_offscreen(mode))
        if display is not None and display.mode != mode:
            asyncio.run(display.stop())
            display = None
        figures = measure(mode, args.frames, args.repeat, args.fps, display)
        if display is not None:
            asyncio.run(display.stop())
        results.append(figures)
        print(f"\n{figures['mode']} at {args.fps} fps, {args.frames} pictures, "
              f"best of {args.repeat}")
        for name in ("floor", "render", "render+show"):
            if name in figures:
                f = figures[name]
                print(f"  {name:<12} {f['cpu_ms_per_frame']:7.2f} ms CPU/frame  "
                      f"{100 * f['core_share_at_fps']:5.1f} % of a core  "
                      f"wall p50 {f['wall_ms_p50']:6.2f} ms  max {f['wall_ms_max']:6.2f} ms")
        print(f"  render / floor: {figures['ratio_render_to_floor']}x")
    print(json.dumps({"bench": "display", "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
