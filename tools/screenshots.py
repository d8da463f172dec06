"""Draw every screen the hall can see into PNGs (docs/screens/), in Vietnamese by default.

    .venv/bin/python -m tiepdan.tools.screenshots --out docs/screens [--language en]

Uses the same layouts and in-call renderer as the box, on the simulated display, with the
synthetic camera's pictures standing in for the composed picture and the self-view.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import av

from tiepdan.board.camera.synthetic import SyntheticCamera
from tiepdan.board.display.simulated import SimulatedDisplay
from tiepdan.board.profile import CameraSpec
from tiepdan.firmware.core.i18n import LANGUAGES, translator
from tiepdan.firmware.screen.catalog import DOMAIN, LOCALEDIR
from tiepdan.firmware.screen.render import CallRenderer
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.state import NextSession, ScreenState

NOW = datetime(2026, 12, 3, 7, 45)


def states() -> dict[str, ScreenState]:
    base = ScreenState(kind="idle", hall="UBND xã Hưng Nguyên", commune="17980",
                       device="xa-hung-nguyen", now=NOW)
    upcoming = NextSession(at=NOW + timedelta(hours=1, minutes=15),
                           title="Tiếp công dân định kỳ tháng 12: đất đai, giải phóng mặt bằng",
                           host_name="Ban Tiếp công dân tỉnh Nghệ An")
    return {
        "idle": _with(base, next_session=upcoming),
        "idle-no-session": base,
        "invited": _with(base, kind="invited", inviter="Ban Tiếp công dân tỉnh Nghệ An",
                         title=upcoming.title),
        "joining": _with(base, kind="joining", inviter="Ban Tiếp công dân tỉnh Nghệ An"),
        "call": _with(base, kind="call", recording=True, quality="good"),
        "call-muted": _with(base, kind="call", recording=True, muted=True, quality="fair"),
        "after-uploading": _with(base, kind="after", upload_percent=45),
        "after-saved": _with(base, kind="after", upload_percent=100),
        "fault-not-enrolled": _with(base, kind="fault", fault="not_enrolled"),
        "fault-unreachable": _with(base, kind="fault", fault="unreachable", online=False,
                                   offline_since=NOW - timedelta(minutes=12)),
        "fault-disk-low": _with(base, kind="fault", fault="disk_low", free_mb=412),
        "fault-updating": _with(base, kind="fault", fault="updating"),
    }


def _with(state: ScreenState, **changes: object) -> ScreenState:
    return ScreenState(**{**state.__dict__, **changes})


def composed_picture() -> av.VideoFrame:
    """Four synthetic cameras composed by the bridge's own compositor, as a box receives them."""
    from tiepdan.controller.sessions.bridge.compositor import Compositor, TileView, grid

    names = ["Ban Tiếp công dân tỉnh Nghệ An", "UBND xã Hưng Nguyên", "UBND xã Diễn Châu",
             "UBND xã Nghi Lộc"]
    rects, gutter = grid(len(names), 1280, 720)
    tiles = []
    for i, (name, rect) in enumerate(zip(names, rects, strict=True)):
        camera = SyntheticCamera(CameraSpec("synthetic", "pattern", 640, 360, 15), label=name)
        frame = av.VideoFrame.from_ndarray(camera.render(0), format="yuv420p")
        tiles.append(TileView(rect=rect, name=name, frame=frame, speaking=i == 0))
    return Compositor(1280, 720).compose(tiles, gutter)


def self_view() -> av.VideoFrame:
    camera = SyntheticCamera(CameraSpec("synthetic", "pattern", 640, 360, 15),
                             label="UBND xã Hưng Nguyên")
    return av.VideoFrame.from_ndarray(camera.render(0), format="yuv420p")


async def draw_all(out: Path, language: str, size: tuple[int, int]) -> list[Path]:
    layouts = Layouts(size, translator(LOCALEDIR, DOMAIN, language))
    display = SimulatedDisplay(*size)
    await display.start()
    written = []
    for name, state in states().items():
        if state.kind == "call":
            frame = CallRenderer(size, layouts).compose(composed_picture(), self_view(), state)
        else:
            import numpy as np

            frame = np.asarray(layouts.draw(state), dtype=np.uint8)
        await display.show(frame)
        written.append(display.snapshot(out / f"{name}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/screens"))
    parser.add_argument("--language", choices=LANGUAGES, default="vi")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default %(default)s)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    for path in asyncio.run(draw_all(args.out, args.language, (width, height))):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
