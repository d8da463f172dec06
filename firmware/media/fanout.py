"""One producer, many consumers: the seam that lets one encoder feed the call and the recorder.

The box encodes its camera once (the Pi 4's hardware H.264 encoder through picamera2, PyAV
elsewhere) and hands the packets to a `Fanout`; the WebRTC sender and the recorder each
subscribe. Each subscriber has its own bounded queue, so a slow consumer never stalls the
producer or the others: when its queue is full it loses packets up to the next key frame
(decoding from a non-key frame would only show garbage) and says so in its `dropped` count.
The same class carries raw frames (microphone audio), where every item is a "key" item.

A live subscriber (a WebRTC sender) also gives `max_age`: a slow consumer (a starved CPU) would
otherwise always find its queue full of items that waited the whole queue's length, and the
delay would grow as the consumption rate falls. An item older than `max_age` when taken is
dropped with everything queued before the newest key item; if that one is stale too, the
subscriber skips to the next key item (and asks for one). Newest wins: fewer frames, never
older ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Subscription(Generic[T]):
    def __init__(self, fanout: Fanout[T], name: str, capacity: int,
                 max_age: float | None = None) -> None:
        self.name = name
        self.dropped = 0
        self.max_age = max_age
        self._fanout = fanout
        self._queue: asyncio.Queue[tuple[T, bool, float] | None] = asyncio.Queue(capacity)
        self._resyncing = False
        self._closed = False

    def _offer(self, item: T, key: bool) -> None:
        if self._resyncing and not key:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((item, key, time.monotonic()))
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
        while True:
            if self._closed and self._queue.empty():
                return None
            entry = await self._queue.get()
            if entry is None:
                return None
            item, _, at = entry
            if self.max_age is None or time.monotonic() - at <= self.max_age:
                return item
            self.dropped += 1
            self._skip_stale()

    def _skip_stale(self) -> None:
        """Keep only what follows the newest waiting key item, if that one is still fresh."""
        waiting: list[tuple[T, bool, float]] = []
        ended = False
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is None:
                ended = True
            else:
                waiting.append(entry)
        keys = [i for i, (_, key, _) in enumerate(waiting) if key]
        now = time.monotonic()
        assert self.max_age is not None
        if keys and now - waiting[keys[-1]][2] <= self.max_age:
            kept = waiting[keys[-1]:]
        else:
            kept = []
            if not self._resyncing:
                self._resyncing = True
                self._fanout.request_key()
        self.dropped += len(waiting) - len(kept)
        if len(waiting) > len(kept):
            log.warning("fanout_stale fanout=%s subscriber=%s dropped=%d", self._fanout.name,
                        self.name, len(waiting) - len(kept))
        for entry in kept:
            self._queue.put_nowait(entry)
        if ended:
            self._queue.put_nowait(None)

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
                self._closed = True
                break
            item = queued[0]
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

    def subscribe(self, name: str, capacity: int = 120,
                  max_age: float | None = None) -> Subscription[T]:
        """A new subscriber starts at the next key item; see the module for `max_age`."""
        subscription = Subscription(self, name, capacity, max_age)
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
