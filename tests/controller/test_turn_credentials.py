"""TURN REST credentials: what coturn's use-auth-secret checks, and they expire."""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec

from tiepdan.controller.config import BridgeSection
from tiepdan.controller.sessions.turn import credentials, ice_servers


def test_username_carries_the_expiry_and_password_is_the_hmac() -> None:
    username, password = credentials("s3cret", "s-1.xa-a", ttl=600, now=1_000_000)
    assert username == "1000600:s-1.xa-a"
    expected = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_no_turn_servers_without_both_urls_and_secret() -> None:
    assert ice_servers(BridgeSection(), "s-1", "xa-a") == []
    assert ice_servers(BridgeSection(turn_urls=("turn:t:3478",)), "s-1", "xa-a") == []
    config = msgspec.convert({"turn_urls": ["turn:t:3478"], "turn_secret": "k"}, BridgeSection)
    (server,) = ice_servers(config, "s-1", "xa-a")
    assert server.urls == ["turn:t:3478"] and server.username.endswith(":s-1.xa-a")
