"""A poor link for a box in a network namespace, and what crosses it, for tests and benchmarks.

netem is not available on every kernel (not on the CI machines this was built on), so the link
is made of what is: a token bucket (`tc ... tbf`: the rate, and a bounded queue that adds
queueing delay as it fills, then drops) on the box's side of its veth, plus random loss from
iptables (`-m statistic --mode random`) on the UDP it sends. Needs root, iproute2, iptables.

`LinkWatch` samples one box of an aiortc-bridge session: what its encoder is asked for and
sends (the box's call telemetry) and how many of its pictures the bridge decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tiepdan.tools.netns import Netns, NetnsError

QUEUE_MS = 300  # the token bucket's queue, as delay at the limited rate


def _run(ns: Netns, *argv: str, check: bool = True) -> None:
    result = subprocess.run(ns.command(list(argv)), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _loss_rule(ns: Netns, loss: float) -> list[str]:
    return ["OUTPUT", "-o", ns.ns_if, "-p", "udp", "-m", "statistic", "--mode", "random",
            "--probability", f"{loss:.4f}", "-j", "DROP"]


def limit(ns: Netns, rate_kbit: int, loss: float = 0.0, queue_ms: int = QUEUE_MS) -> None:
    """Limit what the box sends to `rate_kbit` (queue up to `queue_ms`), losing `loss` of its
    UDP at random."""
    burst = max(3200, rate_kbit * 1000 // 8 // 50)  # 20 ms of tokens, at least two packets
    _run(ns, "tc", "qdisc", "replace", "dev", ns.ns_if, "root", "tbf", "rate",
         f"{rate_kbit}kbit", "burst", str(burst), "latency", f"{queue_ms}ms")
    if loss > 0:
        _run(ns, "iptables", "-I", *_loss_rule(ns, loss))


def lift(ns: Netns, loss: float = 0.0) -> None:
    """Back to the plain veth: no rate limit, no loss."""
    _run(ns, "tc", "qdisc", "del", "dev", ns.ns_if, "root", check=False)
    if loss > 0:
        _run(ns, "iptables", "-D", *_loss_rule(ns, loss), check=False)


@contextlib.contextmanager
def poor_link(ns: Netns, rate_kbit: int, loss: float = 0.0) -> Iterator[None]:
    limit(ns, rate_kbit, loss)
    try:
        yield
    finally:
        lift(ns, loss)


@dataclass
class Phase:
    """One stretch of a run: the box's figures (medians of its telemetry) and what the bridge
    decoded of its picture."""

    name: str
    seconds: float
    frames: int  # the box's pictures the bridge decoded
    target_kbps: float | None
    sent_kbps: float | None
    heights: list[int] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {"phase": self.name, "seconds": round(self.seconds, 1), "frames": self.frames,
                "fps_at_bridge": round(self.fps, 2), "target_kbps": self.target_kbps,
                "sent_kbps": self.sent_kbps, "heights": sorted(set(self.heights))}


class LinkWatch:
    """Samples one box in an aiortc-bridge session, once a second."""

    def __init__(self, controller: Any, session_id: str, device: str) -> None:
        self._controller = controller
        self._session_id = session_id
        self._device = device
        self._last_frames = 0

    def qos(self) -> dict[str, Any]:
        device = self._controller.registry.get(self._device)
        return dict((device.extra.get("call_qos") or {}) if device else {})

    def frames(self) -> int:
        """Decoded pictures since the last call (a rejoin restarts the bridge's count)."""
        session = self._controller.bridge.session(self._session_id)
        member = session.members.get(self._device) if session is not None else None
        count = member.frames_received if member is not None else 0
        delta = count - self._last_frames if count >= self._last_frames else count
        self._last_frames = count
        return delta

    async def phase(self, name: str, seconds: float) -> Phase:
        self.frames()
        targets: list[float] = []
        sent: list[float] = []
        heights: list[int] = []
        frames = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(1.0)
            frames += self.frames()
            qos = self.qos()
            if qos.get("target_kbps") is not None:
                targets.append(float(qos["target_kbps"]))
            if qos.get("kbps_sent") is not None:
                sent.append(float(qos["kbps_sent"]))
            if qos.get("video_height"):
                heights.append(int(qos["video_height"]))
        return Phase(name, time.monotonic() - started, frames,
                     round(statistics.median(targets), 1) if targets else None,
                     round(statistics.median(sent), 1) if sent else None, heights)
