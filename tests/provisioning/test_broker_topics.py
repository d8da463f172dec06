"""Every topic class of the contract against the real broker, generated from firmware/protocol.py.

For each class in the protocol's topic table (what boxes publish, what they subscribe to, the
shared controller presence, and a name the table does not list) and each actor (the box that
owns the subtree, another box, the controller), the test publishes, subscribes and publishes
retained, and compares what Mosquitto did with what the table says. A new topic kind added to
the table is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.provisioning.support import provision
from tests.support import SecureBroker, TlsClient, eventually, running_controller
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import LinkError
from tiepdan.firmware.firstboot.enroll import enroll
from tiepdan.provisioning import dynsec

OWNER, OTHER, CONTROLLER = "xa-a", "xa-b", "controller-central"
UNLISTED = "secret/+"  # in a box's subtree, but in neither direction of the table
SHARED = protocol.BOX_READS_SHARED


@dataclass(frozen=True)
class TopicClass:
    name: str  # the table's entry
    filter: str  # what a subscriber asks for (wildcards as in the table)
    topic: str  # one concrete topic of the class

    @property
    def in_subtree(self) -> bool:
        return self.filter.startswith(protocol.device_root(OWNER) + "/")


def topic_classes() -> list[TopicClass]:
    suffixes = dict.fromkeys((*protocol.BOX_PUBLISHES, *protocol.BOX_SUBSCRIBES, UNLISTED))
    classes = [TopicClass(s, protocol.device_filter(OWNER, s),
                          protocol.device_filter(OWNER, s.replace("+", "x1")))
               for s in suffixes]
    classes += [TopicClass(s, s, s.replace("+", "central")) for s in SHARED]
    return classes


def expected(actor: str, cls: TopicClass) -> dict[str, bool]:
    """The contract: what `actor` may do with `cls`. Retain: the broker keeps the message
    (whether the contract retains that class is the controller's check, tested below)."""
    if actor == CONTROLLER:
        return {"publish": True, "subscribe": True, "retain": True}
    if not cls.in_subtree:  # the controllers' presence: every box reads it, none writes it
        return {"publish": False, "subscribe": True, "retain": False}
    own = actor == OWNER
    publish = own and cls.name in protocol.BOX_PUBLISHES
    return {"publish": publish, "subscribe": own and cls.name in protocol.BOX_SUBSCRIBES,
            "retain": publish}


def client(broker: SecureBroker, tmp_path: Path, cn: str) -> TlsClient:
    return TlsClient(broker, cn, broker.issue(cn, tmp_path / cn))


@pytest.mark.parametrize("actor", [OWNER, OTHER, CONTROLLER])
async def test_every_topic_class_as_the_table_says(secure_broker: SecureBroker, tmp_path: Path,
                                                   actor: str) -> None:
    await secure_broker.admit(OWNER, OTHER)
    classes = topic_classes()
    observed: dict[tuple[str, str], bool] = {}
    async with client(secure_broker, tmp_path, actor) as subject:
        await subject.link.wait_connected(10)
        for cls in classes:
            granted = await subject.link.subscribe((cls.filter, 1))
            observed[cls.name, "subscribe"] = granted[0] < 0x80
            try:
                await subject.link.publish(cls.topic, b'{"probe": "publish"}', qos=1)
                observed[cls.name, "publish"] = True
            except LinkError as exc:
                assert "Not authorized" in str(exc), exc
                observed[cls.name, "publish"] = False
            # A retained publish: kept only when the publish is allowed; checked below by a
            # fresh subscriber, which is sent every retained message it may read.
            tag = f'{{"probe": "retain", "class": "{cls.name}"}}'.encode()
            with contextlib.suppress(LinkError):
                await subject.link.publish(cls.topic, tag, qos=1, retain=True)
    async with client(secure_broker, tmp_path, CONTROLLER) as observer:
        await observer.link.wait_connected(10)
        await observer.link.subscribe((f"{protocol.PREFIX}/#", 1))
        await asyncio.sleep(0.5)  # retained messages arrive right after the SUBACK
        kept = {m.topic for m in observer.messages if m.retain and b'"retain"' in m.payload}
        for cls in classes:
            observed[cls.name, "retain"] = cls.topic in kept
            await observer.link.publish(cls.topic, b"", qos=1, retain=True)

    mismatches = [f"{actor} {action} {cls.name}: table says {want[action]}, broker did "
                  f"{observed[cls.name, action]}"
                  for cls in classes for want in [expected(actor, cls)]
                  for action in ("publish", "subscribe", "retain")
                  if observed[cls.name, action] != want[action]]
    assert mismatches == []
    assert len(observed) == 3 * len(classes)


async def test_refused_subscriptions_are_refused_in_the_broker_not_only_filtered(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The issue's attack: a box's SUBSCRIBE to `#` and `$SYS/#` got SUBACK. Now 0x87, and the
    broker's log has no subscription line for them (it logs only granted ones)."""
    await secure_broker.admit(OWNER)
    async with client(secure_broker, tmp_path, OWNER) as box:
        await box.link.wait_connected(10)
        granted = await box.link.subscribe(("#", 1), ("$SYS/#", 1), (f"{protocol.PREFIX}/#", 1),
                                           ("tiepdan/v1/d/+/cmd/+", 1),
                                           (protocol.device_filter(OWNER, "#"), 1),
                                           (protocol.device_filter(OWNER, "cmd/+"), 1))
        assert granted == [0x87] * 5 + [1]
        await eventually(lambda: f"{OWNER} 1 {protocol.device_filter(OWNER, 'cmd/+')}"
                         in secure_broker.log(), what="the granted subscription in the log")
        assert f"{OWNER} 1 #" not in secure_broker.log()
        assert f"{OWNER} 1 $SYS/#" not in secure_broker.log()


async def test_subscribe_rules_survive_a_reload(secure_broker: SecureBroker,
                                                tmp_path: Path) -> None:
    """SIGHUP (every revocation sends one) re-registers the ACL file: the plugin must still be
    asked first, or SUBSCRIBE would be granted again."""
    await secure_broker.admit(OWNER)
    secure_broker.broker.reload()
    await eventually(lambda: "Reloading config" in secure_broker.log(), what="the reload")
    async with client(secure_broker, tmp_path, OWNER) as box:
        await box.link.wait_connected(10)
        assert await box.link.subscribe(("#", 1)) == [0x87]


async def test_the_controller_clears_retained_messages_the_contract_does_not_retain(
        secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Mosquitto keeps a box's retained `evt/...` (the table row above says so); the running
    controller sees the retain flag (retain-as-published) and deletes it at once, while a
    retained birth, which the contract has, stays."""
    await secure_broker.admit(OWNER)
    parked = protocol.event_topic(OWNER, "parked")
    birth = protocol.birth_topic(OWNER)
    async with running_controller(secure_broker.controller_config()) as controller, \
            client(secure_broker, tmp_path, OWNER) as box:
        await box.link.wait_connected(10)
        await box.link.publish(parked, b'{"parked": true}', qos=1, retain=True)
        await box.link.publish(birth, b'{"not": "a valid birth"}', qos=1, retain=True)
        await eventually(lambda: controller.ingest.retained.cleared >= 1, timeout=30,
                         what="the controller clearing the retained event")
        assert f"retained_refused device={OWNER} topic={parked}" in caplog.text
        assert controller.ingest.retained.cleared == 1
    async with client(secure_broker, tmp_path, CONTROLLER) as observer:
        await observer.link.wait_connected(10)
        await observer.link.subscribe((protocol.device_filter(OWNER, "#"), 1))
        await eventually(lambda: observer.on(birth), what="the retained birth")
        await asyncio.sleep(0.3)
        assert not [m for m in observer.on(parked) if m.payload], "the parked event is gone"


async def test_registering_again_restores_a_role_that_lost_an_acl(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """At every start the controller registers every enrolled box again: an existing role gets
    what the protocol table says now (here: an ACL removed behind its back)."""
    await secure_broker.admit(OWNER)
    cn = dynsec.admin_username(CONTROLLER)
    tls = secure_broker.issue(cn, tmp_path / "admin")
    assert tls.cert_file is not None and tls.key_file is not None
    admin = dynsec.Admin(secure_broker.host, secure_broker.port, tls.ca_file, tls.cert_file,
                         tls.key_file, client_id=cn)
    commands = protocol.device_filter(OWNER, "cmd/+")
    answer = await asyncio.to_thread(admin.run, [{
        "command": "removeRoleACL", "rolename": dynsec.box_role(OWNER),
        "acltype": "subscribePattern", "topic": commands}])
    assert not answer[0].get("error"), answer
    async with client(secure_broker, tmp_path, OWNER) as box:
        await box.link.wait_connected(10)
        assert await box.link.subscribe((commands, 1)) == [0x87]
        await secure_broker.admit(OWNER)
        assert await box.link.subscribe((commands, 1)) == [1]
        assert await box.link.subscribe(("#", 1)) == [0x87]


async def test_a_fleet_from_before_the_plugin_gets_its_rules_in_one_file(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Upgrading: no plugin file yet, boxes already enrolled. The controller writes the file
    with every enrolled box at start; the broker, restarted with it, refuses at once."""
    async with running_controller(secure_broker.controller_config()) as controller:
        await eventually(lambda: controller.provisioning.enrollment.port, timeout=30)
        await enroll(provision(controller, tmp_path, OWNER))
        rules = secure_broker.material.broker.dynsec
        rules.unlink()
        await controller.provisioning._sync_logged("start")
        assert OWNER in {c["username"] for c in json.loads(rules.read_text())["clients"]}
    secure_broker.broker.restart()
    async with client(secure_broker, tmp_path, OWNER) as box:
        await box.link.wait_connected(10)
        assert await box.link.subscribe(("#", 1), (protocol.desired_topic(OWNER), 1)) == \
            [0x87, 1]
