"""The wire contract: topics, validation, and round trips of every message type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiepdan.firmware import protocol


def test_topics_keep_the_device_at_a_fixed_level() -> None:
    assert protocol.state_topic("xa-a") == "tiepdan/v1/d/xa-a/$state"
    assert protocol.command_topic("xa-a", "get-status") == "tiepdan/v1/d/xa-a/cmd/get-status"
    assert protocol.response_topic("xa-a", "central") == "tiepdan/v1/d/xa-a/res/central"
    parsed = protocol.parse_topic("tiepdan/v1/d/xa-a/call/c1/offer")
    assert (parsed.device, parsed.kind, parsed.rest) == ("xa-a", "call", ("c1", "offer"))


@pytest.mark.parametrize("bad", ["", "XA", "-a", "a-", "a_b", "a/b", "a+", "#", "a" * 64])
def test_device_ids_are_checked(bad: str) -> None:
    assert not protocol.is_device_id(bad)
    with pytest.raises(protocol.ProtocolError):
        protocol.state_topic(bad)


@pytest.mark.parametrize("topic", [
    "other/v1/d/xa/$state", "tiepdan/v2/d/xa/$state", "tiepdan/v1/x/xa/$state",
    "tiepdan/v1/d/XA/$state", "tiepdan/v1/d/xa", "tiepdan/v1/d/xa//x",
])
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_topic(topic)


@pytest.mark.parametrize("reply", [
    "tiepdan/v1/d/xa-b/res/central", "tiepdan/v1/d/xa-a/cmd/x", "tiepdan/v1/d/xa-a/res/",
    "tiepdan/v1/d/xa-a/res/+", "tiepdan/v1/d/xa-a/res/#", "tiepdan/v1/d/xa-a/res/a/b",
    "anything",
])
def test_response_topics_outside_the_box_are_refused(reply: str) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.check_response_topic("xa-a", reply)
    protocol.check_response_topic("xa-a", "tiepdan/v1/d/xa-a/res/central")


def test_validation_names_the_path() -> None:
    with pytest.raises(protocol.ProtocolError, match=r"\$\.point\.kind"):
        protocol.decode(b'{"seq":1,"ts":1,"firmware":"f","board":"b","boot_id":"x",'
                        b'"keepalive":10,"point":{"kind":"village","name":"n"}}', protocol.Birth)
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.decode(b" " * (protocol.MAX_PAYLOAD + 1), protocol.Command)


def test_unknown_fields_are_tolerated_for_mixed_fleets() -> None:
    state = protocol.decode(b'{"state":"ready","seq":3,"ts":5,"added_in_v1_1":true}',
                            protocol.DeviceState)
    assert state.seq == 3


def test_events_are_tagged_by_kind() -> None:
    event = protocol.Event(id="e1", ts=1, data=protocol.ButtonEvent(button="mute"))
    decoded = protocol.decode(protocol.encode(event), protocol.Event)
    assert decoded == event
    assert protocol.event_kind(decoded.data) == "button"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b'{"id":"e","ts":1,"data":{"kind":"button","button":"fire"}}',
                        protocol.Event)


@given(st.builds(protocol.RemoteConfig,
                 telemetry_interval=st.none() | st.floats(1, 3600),
                 log_level=st.none() | st.sampled_from(["debug", "info", "warning", "error"]),
                 tags=st.none() | st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
                                           max_size=3),
                 auto_join=st.none() | st.booleans()))
def test_desired_round_trips(config: protocol.RemoteConfig) -> None:
    desired = protocol.Desired(version=1, ts=2, config=config)
    assert protocol.decode(protocol.encode(desired), protocol.Desired) == desired


def test_topic_directions_do_not_overlap() -> None:
    """A filter the box both publishes and subscribes to would let it command itself."""
    both = set(protocol.BOX_PUBLISHES) & set(protocol.BOX_SUBSCRIBES)
    assert both == {"$state"}, "only its own presence is both written and read by a box"
    assert "cmd/+" not in protocol.BOX_PUBLISHES
    assert "state/desired" not in protocol.BOX_PUBLISHES


def test_the_board_wires_exactly_the_buttons_the_wire_names() -> None:
    from tiepdan.board.profile import BUTTONS

    assert tuple(BUTTONS) == protocol.BUTTON_NAMES
    assert all(protocol.is_button(b) for b in BUTTONS) and not protocol.is_button("reset")
def test_split_plan_fields_are_additions_an_older_peer_can_ignore() -> None:
    old_offer = b'{"type":"offer","session":"s-1","attempt":1,"sdp":"v=0","ts":1}'
    offer = protocol.decode_call_up(old_offer)
    assert isinstance(offer, protocol.CallOffer) and offer.leg == "main"
    view = protocol.decode_call_down(protocol.encode(protocol.CallOffer(
        session="s-1", attempt=2, sdp="v=0", ts=1, leg="view")))
    assert isinstance(view, protocol.CallOffer) and view.leg == "view"
    answer = protocol.decode_call_up(protocol.encode(protocol.CallAnswer(
        session="s-1", attempt=2, sdp="v=0", ts=1, leg="view")))
    assert isinstance(answer, protocol.CallAnswer) and answer.leg == "view"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_call_up(b'{"type":"offer","session":"s-1","attempt":1,"sdp":"v=0",'
                                b'"ts":1,"leg":"sideways"}')
    invite = protocol.convert({"session": "s-1", "call": "c-1", "role": "guest", "host": "h",
                               "host_name": "H", "expires": 1}, protocol.SessionInvite)
    assert invite.plan == "single" and invite.ice_servers == []
    with pytest.raises(protocol.ProtocolError):
        protocol.convert({"session": "s-1", "call": "c-1", "role": "guest", "host": "h",
                          "host_name": "H", "expires": 1, "ice_servers": [{"urls": []}]},
                         protocol.SessionInvite)
