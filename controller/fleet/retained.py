"""Retained messages where the contract has none are cleared as soon as the controller sees one.

Mosquitto 2.0 cannot refuse retention per topic, so a box (a malicious one, or a bug) could park
messages on, say, its `evt/big`: every later subscriber would be sent them. The controller
subscribes with "retain as published", so it sees the retain flag on live messages too, and
answers one on a topic outside `protocol.RETAINED` with an empty retained message, which
deletes it from the broker. The message itself is still handled like any other.
"""

from __future__ import annotations

import logging

from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)


class RetainedGuard:
    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self.cleared = 0

    def check(self, message: Inbound) -> bool:
        """True when `message` was retained against the contract (and is now cleared)."""
        if not message.retain or not message.payload:
            return False
        try:
            topic = protocol.parse_topic(message.topic)
        except protocol.ProtocolError:
            return False  # not a device topic: the ingest rejects and logs it
        if protocol.retained_in_contract(topic):
            return False
        self.cleared += 1
        log.warning("retained_refused device=%s topic=%s bytes=%d", topic.device,
                    message.topic[:160], len(message.payload))
        self._link.publish(message.topic, b"", qos=1, retain=True)
        return True
