"""The agent under systemd's notify protocol, checked on a real notify socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import AgentProcess, write_agent_config
from tiepdan.tools.broker import Mosquitto, free_port


def _collect(sock: socket.socket, until: float) -> list[str]:
    messages: list[str] = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_ready_only_after_the_broker_and_watchdog_while_healthy(
        tmp_path: Path, broker: Mosquitto, agent_process: Callable[..., AgentProcess]) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.2)
        # First with the broker away: the agent must not claim READY.
        unreachable = write_agent_config(tmp_path, broker, "xa-sd", mqtt={"port": free_port()})
        box = agent_process(unreachable, env={"NOTIFY_SOCKET": address,
                                              "WATCHDOG_USEC": "1500000"})
        early = _collect(sock, time.monotonic() + 3)
        assert not any("READY=1" in m for m in early), early
        box.terminate()
        assert any("STOPPING=1" in m for m in _collect(sock, time.monotonic() + 0.5))

        reachable = write_agent_config(tmp_path, broker, "xa-sd")
        box = agent_process(reachable, env={"NOTIFY_SOCKET": address,
                                            "WATCHDOG_USEC": "1500000"})
        messages = _collect(sock, time.monotonic() + 4)
        ready = [i for i, m in enumerate(messages) if "READY=1" in m]
        assert ready, messages
        pings = [m for m in messages[ready[0]:] if m == "WATCHDOG=1"]
        # A ping every third of the 1.5 s interval: several within ~3 s of READY.
        assert len(pings) >= 3, messages
        box.terminate()
