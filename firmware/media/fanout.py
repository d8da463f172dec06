"""One producer, many consumers: the seam that lets one encoder feed the call and the recorder.

The box encodes its camera once (the Pi 4's hardware H.264 encoder through picamera2, PyAV
elsewhere) and hands the packets to a `Fanout`; the WebRTC sender and the recorder each
subscribe. Each subscriber has its own bounded queue, so a slow consumer never stalls the
producer or the others: when its queue is full it loses packets up to the next key frame
(decoding from a non-key frame would only show garbage) and says so in its `dropped` count.
The same class carries raw frames (microphone audio), where every item is a "key" item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Subscription(Generic[T]):
    def __init__(self, fanout: Fanout[T], name: str, capacity: int) -> None:
        self.name = name
        self.dropped = 0
        self._fanout = fanout
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(capacity)
        self._resyncing = False
        self._closed = False

    def _offer(self, item: T, key: bool) -> None:
        if self._resyncing and not key:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(item)
            self._resyncing = False
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._resyncing:
                log.warning("fanout_overrun fanout=%s subscriber=%s", self._fanout.name,
                            self.name)
                self._resyncing = True
                self._fanout.request_key()

    def _end(self) -> None:
        # Queued items stay deliverable; the marker only wakes a consumer waiting on empty.
        self._closed = True
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def get(self) -> T | None:
        """The next item, or None once the producer has finished and everything is consumed."""
        if self._closed and self._queue.empty():
            return None
        return await self._queue.get()

    async def latest(self) -> T | None:
        """The newest item, skipping older queued ones: for raw pictures, where only the one
        to show now matters (a display that fell behind catches up instead of lagging)."""
        item = await self.get()
        newer = self.newest()
        return item if newer is None else newer

    def newest(self) -> T | None:
        """Without waiting: the newest queued item (older ones are skipped), or None."""
        item = None
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            if queued is None:
                break
            item = queued
        return item

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self.get()) is not None:
            yield item

    def close(self) -> None:
        self._fanout._unsubscribe(self)


class Fanout(Generic[T]):
    """Distributes items to subscribers; `is_key(item)` marks the items a decoder can start at.

    `on_key_request` is called when a subscriber joins or falls behind, so an encoder can emit
    a key frame rather than make the newcomer wait for the next scheduled one.
    """

    def __init__(self, name: str, *, is_key: Callable[[T], bool] = lambda _: True,
                 on_key_request: Callable[[], None] | None = None) -> None:
        self.name = name
        self._is_key = is_key
        self._on_key_request = on_key_request
        self._subscribers: list[Subscription[T]] = []
        self.published = 0

    def subscribe(self, name: str, capacity: int = 120) -> Subscription[T]:
        """A new subscriber starts at the next key item."""
        subscription = Subscription(self, name, capacity)
        subscription._resyncing = True
        self._subscribers.append(subscription)
        self.request_key()
        return subscription

    def _unsubscribe(self, subscription: Subscription[T]) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
            subscription._end()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        self.published += 1
        key = self._is_key(item)
        for subscription in self._subscribers:
            subscription._offer(item, key)

    def request_key(self) -> None:
        if self._on_key_request is not None:
            self._on_key_request()

    def close(self) -> None:
        """The producer is done: every subscriber's iteration ends."""
        for subscription in list(self._subscribers):
            self._unsubscribe(subscription)
