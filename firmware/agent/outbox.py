"""QoS 1 events that survive disconnects, broker restarts and agent crashes.

An event is written to disk before it is handed to MQTT and removed only after the broker's
PUBACK. While the link is down paho keeps the message and resends it after reconnecting; after a
crash the next agent resends what the disk still holds. Either way the controller may see an
event twice, never zero times, and drops duplicates by event id.
"""

from __future__ import annotations

import asyncio
import logging

from tiepdan.firmware import protocol
from tiepdan.firmware.agent.store import BoxStore
from tiepdan.firmware.core.mqtt import LinkStopped, MqttLink

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, device: str, store: BoxStore, link: MqttLink) -> None:
        self._device = device
        self._store = store
        self._link = link
        self._in_flight: set[str] = set()

    def __len__(self) -> int:
        return self._store.outbox_len()

    def send(self, data: protocol.EventData) -> str:
        """Persist and publish one event; returns its id.

        Raises ProtocolError for an event the controller would reject: structs are not checked
        when built, so the check happens here, at the source, not at the far end.
        """
        event = protocol.Event(id=protocol.new_id(), ts=protocol.now_ms(), data=data)
        topic = protocol.event_topic(self._device, protocol.event_kind(data))
        payload = protocol.encode(event)
        protocol.decode(payload, protocol.Event)
        self._store.outbox_add(event.id, topic, payload)
        self._publish(event.id, topic, payload)
        return event.id

    def resend_pending(self) -> int:
        """After (re)start: publish what an earlier run persisted but never saw acknowledged."""
        count = 0
        for event_id, topic, payload in list(self._store.outbox_items()):
            if event_id not in self._in_flight:
                self._publish(event_id, topic, payload)
                count += 1
        if count:
            log.info("outbox_resend device=%s events=%d", self._device, count)
        return count

    def _publish(self, event_id: str, topic: str, payload: bytes) -> None:
        self._in_flight.add(event_id)
        future = self._link.publish(topic, payload, qos=1)
        future.add_done_callback(lambda f: self._acked(event_id, f))

    def _acked(self, event_id: str, future: asyncio.Future[None]) -> None:
        self._in_flight.discard(event_id)
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, LinkStopped):
            return  # still on disk; the next run resends it
        if error is not None:
            # The broker refused it (an ACL, say): resending cannot help, so the log keeps it.
            log.error("outbox_event_refused event=%s error=%s", event_id, error)
        self._store.outbox_remove(event_id)
