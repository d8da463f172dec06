"""Time-limited TURN credentials per session point (the TURN REST API's shared-secret scheme).

coturn (`use-auth-secret`, `static-auth-secret=S`) accepts username `<expiry>:<name>` with
password `base64(HMAC-SHA1(S, username))` until `<expiry>` (Unix seconds): nothing to store on
the TURN server, and a credential leaked from a hall stops working when the session is long
over. The controller mints one per point and invitation (`bridge.turn_ttl`), and hands it to
the box in its `SessionInvite.ice_servers`; a browser point gets the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from tiepdan.controller.config import BridgeSection
from tiepdan.firmware import protocol


def credentials(secret: str, name: str, ttl: float, now: float | None = None) -> tuple[str, str]:
    """(username, password) valid for `ttl` seconds."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(config: BridgeSection, session: str, device: str) -> list[protocol.IceServer]:
    """What a point needs to reach the bridge through TURN; empty without `bridge.turn_urls`."""
    if not config.turn_urls or not config.turn_secret:
        return []
    username, password = credentials(config.turn_secret, f"{session}.{device}",
                                     config.turn_ttl)
    return [protocol.IceServer(urls=list(config.turn_urls), username=username,
                               credential=password)]
