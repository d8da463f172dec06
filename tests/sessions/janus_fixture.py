"""A real Janus in a network namespace of its own, for the Janus backend's tests.

Janus never gathers ICE on loopback, so it runs behind a veth link only this host reaches;
the points and the compositor gather on the host's end of that link.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiepdan.tools import netns
from tiepdan.tools.janus import Janus

requires_janus = pytest.mark.skipif(
    not netns.available() or shutil.which("janus") is None,
    reason="the Janus backend's tests need root (a network namespace) and Debian's janus")


@pytest.fixture
def janus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Janus]:
    with netns.namespace("jan", index=1) as ns:
        # After the loopback-only autouse fixture: the host's end of the veth link.
        monkeypatch.setattr("aioice.ice.get_host_addresses",
                            lambda use_ipv4=True, use_ipv6=True: [ns.host_ip])
        with Janus(tmp_path / "janus", netns=ns) as server:
            yield server


def janus_bridge(janus: Janus) -> dict[str, object]:
    """The `[bridge]` settings that select this Janus."""
    return {"backend": "janus", "janus_url": janus.url, "janus_api_secret": janus.api_secret}
