"""USB (UVC) cameras through FFmpeg's V4L2 demuxer, or any FFmpeg input given as `format:url`.

A thread demuxes and decodes without pause and keeps only the newest frame: a live camera
must be drained, or its kernel buffers fill and the picture falls seconds behind. Inputs that
are not live (a file, a lavfi test source) are slowed to their own frame rate in that thread,
so every input goes through the same path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.container

from tiepdan.board.camera import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, Camera
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import CameraSpec

__all__ = ["Source", "V4l2Camera", "source_for"]

log = logging.getLogger(__name__)

# UVC cameras only reach 720p30 over USB 2 with compressed frames.
V4L2_INPUT_FORMAT = "mjpeg"
STOP_TIMEOUT_S = 2.0
# A source more than this far ahead of real time has jumped its clock; re-anchor, don't sleep.
MAX_AHEAD_S = 1.0


@dataclass(frozen=True)
class Source:
    url: str
    format: str
    options: dict[str, str]


def source_for(spec: CameraSpec) -> Source:
    """`/dev/videoN` opens a V4L2 device; `fmt:url` any FFmpeg demuxer, e.g. `lavfi:testsrc`."""
    device = spec.device
    if device.startswith("/"):
        return Source(
            device,
            "v4l2",
            {
                "video_size": f"{spec.width}x{spec.height}",
                "framerate": str(spec.fps),
                "input_format": V4L2_INPUT_FORMAT,
            },
        )
    fmt, sep, url = device.partition(":")
    if not sep or not url:
        raise BoardError(f"camera device {device!r} is neither /dev/videoN nor 'format:url'")
    if fmt not in av.formats_available:
        raise BoardError(f"camera device {device!r}: FFmpeg has no input format {fmt!r}")
    return Source(url, fmt, {})


class V4l2Camera(Camera):
    def __init__(self, spec: CameraSpec) -> None:
        super().__init__(spec)
        self.source = source_for(spec)
        self._wanted = (self.width, self.height, "yuv420p")
        self._container: av.container.InputContainer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fresh = asyncio.Event()
        self._latest: tuple[av.VideoFrame, float] | None = None
        self._error: BoardError | None = None
        self._t0: float | None = None
        self._last_pts = -1

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        src = self.source
        try:
            self._container = await asyncio.to_thread(
                av.open, src.url, format=src.format, options=src.options
            )
        except (OSError, av.FFmpegError) as exc:
            raise BoardError(f"cannot open camera {self.spec.device!r}: {exc}") from exc
        self._stopping.clear()
        self._error = None
        self._latest = None
        self._thread = threading.Thread(target=self._run, name="camera-v4l2", daemon=True)
        self._thread.start()
        log.info("camera_started backend=v4l2 url=%s format=%s", src.url, src.format)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        if thread.is_alive():
            log.warning("camera_stop_timeout device=%s", self.spec.device)
        log.info("camera_stopped backend=v4l2 device=%s", self.spec.device)

    async def read(self) -> av.VideoFrame:
        if self._thread is None:
            raise BoardError("camera is not started")
        while self._latest is None:
            if self._error is not None:
                raise self._error
            await self._fresh.wait()
            self._fresh.clear()
        frame, captured = self._latest
        self._latest = None
        if self._t0 is None:
            self._t0 = captured
        pts = max(round((captured - self._t0) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def _run(self) -> None:
        container = self._container
        assert container is not None and self._loop is not None
        paced_from: tuple[float, float] | None = None
        try:
            for frame in container.decode(video=0):
                if self._stopping.is_set():
                    break
                captured = time.monotonic()
                # Live sources stamp frames with real time, so this never waits for them.
                if frame.time is not None:
                    if paced_from is None:
                        paced_from = (captured, frame.time)
                    ahead = paced_from[0] + (frame.time - paced_from[1]) - captured
                    if ahead > MAX_AHEAD_S or ahead < -MAX_AHEAD_S:
                        paced_from = (captured, frame.time)
                    elif ahead > 0:
                        if self._stopping.wait(ahead):
                            break
                        captured = time.monotonic()
                picture = frame
                if (frame.width, frame.height, frame.format.name) != self._wanted:
                    picture = frame.reformat(width=self.width, height=self.height, format="yuv420p")
                if not self._post(self._deliver, picture, captured):
                    break
            else:
                self._fail(BoardError(f"camera {self.spec.device!r} stopped delivering frames"))
        except (OSError, av.FFmpegError) as exc:
            self._fail(BoardError(f"camera {self.spec.device!r} failed: {exc}"))
        finally:
            container.close()

    def _deliver(self, frame: av.VideoFrame, captured: float) -> None:
        self._latest = (frame, captured)
        self._fresh.set()

    def _post(self, callback: Callable[..., None], *args: object) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed under a camera nobody stopped
            return False
        return True

    def _fail(self, error: BoardError) -> None:
        log.error("camera_failed device=%s error=%s", self.spec.device, error)
        self._post(self._set_error, error)

    def _set_error(self, error: BoardError) -> None:
        self._error = error
        self._fresh.set()
