"""A still of a session's composed picture, for the live view: what every point sees now.

It subscribes to the bridge session's encoded `composed_video` (the bridge interface, so any
backend that publishes it works), decodes from the next key frame and returns one JPEG.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import av

from tiepdan.controller.sessions.bridge import BridgeSession
from tiepdan.errors import NotFound

WIDTH = 640


class NoPicture(NotFound):
    """No key frame arrived in time (the session is not composing)."""


def _decode(packets: list[Any]) -> bytes | None:
    codec = av.CodecContext.create("h264", "r")
    for packet in packets:
        for frame in codec.decode(packet):
            image = frame.to_image()  # type: ignore[no-untyped-call]
            height = max(2, round(image.height * WIDTH / max(1, image.width)))
            out = io.BytesIO()
            image.resize((WIDTH, height)).save(out, "JPEG", quality=80)
            return out.getvalue()
    return None


class Stills:
    """One still per session every few seconds, shared by every viewer: each fresh still costs
    a forced key frame for every point, so viewers must not multiply them."""

    def __init__(self, max_age: float = 4.0) -> None:
        self.max_age = max_age
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def of(self, media: BridgeSession) -> bytes:
        lock = self._locks.setdefault(media.id, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            cached = self._cache.get(media.id)
            if cached is not None and loop.time() - cached[0] < self.max_age:
                return cached[1]
            picture = await still(media)
            self._cache[media.id] = (loop.time(), picture)
            return picture

    def forget(self, session: str) -> None:
        self._cache.pop(session, None)
        self._locks.pop(session, None)


async def still(media: BridgeSession, timeout: float = 5.0) -> bytes:
    subscription = media.composed_video.subscribe("console-preview", capacity=30)
    packets: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                packet = await subscription.get()
                if packet is None:
                    break
                packets.append(packet)
                picture = await asyncio.to_thread(_decode, list(packets))
                if picture is not None:
                    return picture
    except TimeoutError:
        pass
    finally:
        subscription.close()
    raise NoPicture("no composed picture")
