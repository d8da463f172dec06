"""The broker's side, against the real Mosquitto 2.0 with provisioning's configuration.

Boxes are raw MQTT clients holding real certificates from the provisioning CA, doing what a
compromised box would try. Each attack in the issue is its own test; the broker's log line (or
its PUBACK reason code) is part of what is checked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support import SecureBroker, TlsClient, eventually
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import LinkError, TlsSettings
from tiepdan.provisioning.ca import CertificateAuthority, cert_pem, new_key, write_key, write_public
from tiepdan.provisioning.mosquitto import acl_text, box_acl_rules


def client(secure_broker: SecureBroker, tmp_path: Path, cn: str,
           client_id: str | None = None) -> TlsClient:
    return TlsClient(secure_broker, client_id or cn, secure_broker.issue(cn, tmp_path / cn))


async def connected(*clients: TlsClient) -> None:
    for c in clients:
        await c.link.wait_connected(10)


async def refused(c: TlsClient, secure_broker: SecureBroker, line: str) -> None:
    await eventually(lambda: line in secure_broker.log(), what=f"broker log: {line}")
    await asyncio.sleep(0.5)
    assert c.link.connects == 0 and not c.link.connected


async def test_a_box_without_a_client_certificate_is_refused(secure_broker: SecureBroker) -> None:
    tls = TlsSettings(ca_file=secure_broker.material.broker.ca)
    async with TlsClient(secure_broker, "xa-a", tls) as box:
        await refused(box, secure_broker, "peer did not return a certificate")


async def test_a_box_without_tls_is_refused(secure_broker: SecureBroker) -> None:
    async with TlsClient(secure_broker, "xa-a", None) as box:
        await refused(box, secure_broker, "disconnected: Protocol error")


async def test_a_box_with_a_certificate_from_another_ca_is_refused(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    other = CertificateAuthority.create("someone else's CA")
    key = new_key()
    write_key(tmp_path / "evil.key", key)
    write_public(tmp_path / "evil.pem", cert_pem(other.issue_client(key.public_key(), "xa-a", 30)))
    tls = TlsSettings(ca_file=secure_broker.material.broker.ca, cert_file=tmp_path / "evil.pem",
                      key_file=tmp_path / "evil.key")
    async with TlsClient(secure_broker, "xa-a", tls) as box:
        await refused(box, secure_broker, "certificate verify failed")


async def test_a_box_publishing_to_another_boxs_topics_is_refused(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with client(secure_broker, tmp_path, "controller-central") as ctl, \
            client(secure_broker, tmp_path, "xa-a") as a:
        await connected(ctl, a)
        await ctl.link.subscribe((protocol.device_filter("+", "#"), 1))
        for topic in (protocol.event_topic("xa-b", "button"), protocol.state_topic("xa-b"),
                      protocol.birth_topic("xa-b"), protocol.tele_topic("xa-b", "health")):
            with pytest.raises(LinkError, match="Not authorized"):
                await a.link.publish(topic, b"{}", qos=1)
            assert "Denied PUBLISH from xa-a" in secure_broker.log()
            assert f"'{topic}'" in secure_broker.log()
        await a.link.publish(protocol.tele_topic("xa-a", "health"), b"{}", qos=1)
        await eventually(lambda: ctl.on(protocol.device_root("xa-a")), what="own telemetry")
        assert not ctl.on(protocol.device_root("xa-b")), "nothing reached the controller"


async def test_a_box_publishing_to_command_topics_is_refused(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with client(secure_broker, tmp_path, "xa-a") as a, \
            client(secure_broker, tmp_path, "xa-b") as b:
        await connected(a, b)
        await b.link.subscribe((protocol.device_filter("xa-b", "cmd/+"), 1),
                               (protocol.desired_topic("xa-b"), 1))
        for topic in (protocol.command_topic("xa-b", "restart-agent"),
                      protocol.command_topic("xa-a", "restart-agent"),
                      protocol.desired_topic("xa-b"), protocol.desired_topic("xa-a"),
                      protocol.controller_state_topic("central"),
                      f"{protocol.device_root('xa-b')}/call/c1/down",
                      f"{protocol.device_root('xa-b')}/jobs/notify"):
            with pytest.raises(LinkError, match="Not authorized"):
                await a.link.publish(topic, b"{}", qos=1)
            assert f"'{topic}'" in secure_broker.log()
        await asyncio.sleep(0.3)
        assert b.messages == []


async def test_a_box_subscribing_to_everything_receives_only_its_own(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Defence in depth for a box the subscribe rules do not know (provisioning/dynsec.py
    refuses these filters for every enrolled box): Mosquitto 2.0's ACL file grants the
    wildcard, and every message is then checked against the box's read rights on delivery."""
    async with client(secure_broker, tmp_path, "controller-central") as ctl, \
            client(secure_broker, tmp_path, "xa-a") as a, \
            client(secure_broker, tmp_path, "xa-b") as b:
        await connected(ctl, a, b)
        await b.link.publish(protocol.birth_topic("xa-b"), b'{"retained": 1}', retain=True)
        granted = await a.link.subscribe(("tiepdan/#", 1), ("#", 1))
        assert "xa-a 1 tiepdan/#" in secure_broker.log()
        await b.link.publish(protocol.event_topic("xa-b", "button"), b"{}", qos=1)
        await b.link.publish(protocol.reported_topic("xa-b"), b"{}", qos=1, retain=True)
        await ctl.link.publish(protocol.command_topic("xa-b", "ping"), b"{}", qos=1)
        await ctl.link.publish(protocol.desired_topic("xa-b"), b"{}", qos=1, retain=True)
        await ctl.link.publish(protocol.controller_state_topic("central"), b"{}", retain=True)
        await ctl.link.publish(protocol.command_topic("xa-a", "ping"), b"{}", qos=1)
        await eventually(lambda: a.on(protocol.command_topic("xa-a", "ping")),
                         what="the box's own command")
        await eventually(lambda: a.on(protocol.controller_state_topic("central")),
                         what="the controller's presence")
        await asyncio.sleep(0.3)
        foreign = [m.topic for m in a.messages
                   if not m.topic.startswith(protocol.device_root("xa-a") + "/")
                   and m.topic != protocol.controller_state_topic("central")]
        assert foreign == [], f"leaked to xa-a: {foreign} (SUBACK said {granted})"


async def test_a_box_cannot_borrow_another_boxs_client_id(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with client(secure_broker, tmp_path, "xa-b") as b:
        await connected(b)
        async with client(secure_broker, tmp_path, "xa-a", client_id="xa-b") as a:
            await connected(a)
            assert "as xa-a (p5" in secure_broker.log()
            await asyncio.sleep(0.5)
            assert b.link.connected and b.link.connects == 1, "xa-b was not taken over"
            with pytest.raises(LinkError, match="Not authorized"):
                await a.link.publish(protocol.state_topic("xa-b"), b"{}", qos=1)


async def test_the_controller_may_command_and_configure_a_box(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    async with client(secure_broker, tmp_path, "controller-central") as ctl, \
            client(secure_broker, tmp_path, "xa-a") as a:
        await connected(ctl, a)
        await a.link.subscribe((protocol.device_filter("xa-a", "cmd/+"), 1),
                               (protocol.desired_topic("xa-a"), 1))
        await ctl.link.publish(protocol.command_topic("xa-a", "ping"), b"{}", qos=1)
        await ctl.link.publish(protocol.desired_topic("xa-a"), b"{}", qos=1)
        await eventually(lambda: len(a.messages) == 2, what="command and desired state")


def test_the_acl_follows_the_protocol_directions() -> None:
    rules = box_acl_rules()
    root = f"{protocol.PREFIX}/d/%u"
    for suffix in protocol.BOX_PUBLISHES:
        right = "readwrite" if suffix in protocol.BOX_SUBSCRIBES else "write"
        assert f"pattern {right} {root}/{suffix}" in rules
    for suffix in protocol.BOX_SUBSCRIBES:
        right = "readwrite" if suffix in protocol.BOX_PUBLISHES else "read"
        assert f"pattern {right} {root}/{suffix}" in rules
    assert all("cmd" not in r or r.startswith("pattern read") for r in rules)
    text = acl_text(["controller-central"], revoked=["xa-z"])
    assert "user controller-central\ntopic readwrite tiepdan/v1/#" in text
    assert "user xa-z\ntopic deny #" in text
    with pytest.raises(protocol.ProtocolError):
        acl_text(["controller central"])


async def test_a_ten_megabyte_retained_message_is_refused(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The issue's attack: a box stored 10 MB retained on its own `evt/big`. The broker now
    reads the packet's length, answers DISCONNECT 0x95 (packet too large) and keeps nothing;
    the box reconnects and carries on."""
    async with client(secure_broker, tmp_path, "controller-central") as ctl, \
            client(secure_broker, tmp_path, "xa-a") as a:
        await connected(ctl, a)
        big = protocol.event_topic("xa-a", "big")
        a.link.publish(big, b"x" * (10 * 1024 * 1024), qos=0, retain=True)
        await eventually(lambda: a.link.connects >= 2, what="the box back after the refusal")
        assert "Client xa-a disconnected due to oversize packet." in secure_broker.log()
        await a.link.publish(protocol.event_topic("xa-a", "small"), b"{}", qos=1, retain=True)
        granted = await ctl.link.subscribe((protocol.device_filter("xa-a", "evt/+"), 1))
        assert granted == [1]
        await eventually(lambda: ctl.on(protocol.event_topic("xa-a", "small")),
                         what="the small retained event")
        assert not ctl.on(big), "the broker kept the 10 MB message"
        limit = protocol.MAX_PAYLOAD
        # At the protocol's own limit a message still goes through.
        await a.link.publish(protocol.event_topic("xa-a", "edge"), b"y" * limit, qos=1)
        await eventually(lambda: ctl.on(protocol.event_topic("xa-a", "edge")),
                         what="a message of MAX_PAYLOAD bytes")
