"""Screen tests run real sessions (aiortc peers on loopback) with a simulated HDMI display."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # aioice skips 127.0.0.1 when it gathers host candidates; tests want nothing else.
    monkeypatch.setattr("aioice.ice.get_host_addresses",
                        lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
    yield
