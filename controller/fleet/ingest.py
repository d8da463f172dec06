"""Everything boxes publish, validated and routed; nothing a box sends can stop the controller.

The link runs with manual acknowledgement: a QoS 1 event is acknowledged to the broker only
after it is committed to the database, so a controller crash between the two means a
redelivery (dropped as a duplicate), never a loss. Malformed messages are logged and
acknowledged, since redelivering them cannot help.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from paho.mqtt.subscribeoptions import SubscribeOptions

from tiepdan.controller.fleet.commands import CommandClient
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.fleet.retained import RetainedGuard
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

Route = Callable[[protocol.Topic, Inbound], None]


class Ingest:
    def __init__(self, registry: Registry, rpc: CommandClient, link: MqttLink) -> None:
        self._registry = registry
        self._rpc = rpc
        self._link = link
        self._routes: dict[str, Route] = {}
        self._filters: list[str] = [
            protocol.device_filter("+", "$birth"),
            protocol.device_filter("+", "$state"),
            protocol.device_filter("+", "tele/+"),
            protocol.device_filter("+", "evt/+"),
            protocol.device_filter("+", "state/reported"),
            rpc.response_filter,
        ]
        self.rejected = 0
        self.received: collections.Counter[str] = collections.Counter()
        self.retained = RetainedGuard(link)

    @property
    def filters(self) -> list[str]:
        """What the controller subscribes to: only what boxes publish, never its own output."""
        return list(self._filters)

    @property
    def subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        """`filters` at QoS 1, with the retain flag as the box set it (see RetainedGuard)."""
        return [(f, SubscribeOptions(qos=1, retainAsPublished=True)) for f in self._filters]

    def route(self, kind: str, handler: Route, suffix: str | None = None) -> None:
        """Other parts (sessions, uploads, jobs) take the device topics of their kind."""
        self._routes[kind] = handler
        self._filters.append(protocol.device_filter("+", suffix or f"{kind}/#"))

    def on_message(self, message: Inbound) -> None:
        try:
            self.received[message.topic.split("/", 5)[4] if message.topic.count("/") >= 4
                          else "other"] += 1
            self.retained.check(message)
            self._dispatch(message)
        except protocol.ProtocolError as exc:
            self.rejected += 1
            log.error("message_rejected topic=%s error=%s", message.topic[:160], exc)
        finally:
            self._link.ack(message)

    def _dispatch(self, message: Inbound) -> None:
        topic = protocol.parse_topic(message.topic)
        device, kind = topic.device, topic.kind
        if kind == "$birth":
            if message.payload:
                self._registry.on_birth(device, protocol.decode(message.payload, protocol.Birth))
        elif kind == "$state":
            if message.payload:
                self._registry.on_state(device,
                                        protocol.decode(message.payload, protocol.DeviceState))
        elif kind == "tele" and topic.rest == ("health",):
            self._registry.on_health(device, protocol.decode(message.payload, protocol.Health))
        elif kind == "state" and topic.rest == ("reported",):
            if message.payload:
                self._registry.on_reported(device,
                                           protocol.decode(message.payload, protocol.Reported))
        elif kind == "evt" and len(topic.rest) == 1:
            event = protocol.decode(message.payload, protocol.Event)
            if protocol.event_kind(event.data) != topic.leaf:
                raise protocol.ProtocolError(
                    f"event of kind {protocol.event_kind(event.data)} on {message.topic[:120]}")
            self._registry.on_event(device, event)
        elif kind == "res":
            self._rpc.on_response(device, message)
        elif kind in self._routes:
            self._routes[kind](topic, message)
        else:
            raise protocol.ProtocolError(f"no handler for {message.topic[:120]}")
