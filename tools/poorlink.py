"""A poor link for a box in a network namespace, and what crosses it, for tests and benchmarks.

netem is not available on every kernel (not on the CI machines this was built on), so the link
is made of what is: a token bucket (`tc ... tbf`: the rate, and a bounded queue that adds
queueing delay as it fills, then drops) on each end of the box's veth (uplink inside the
namespace, downlink on the host's end), plus random loss from iptables (`-m statistic --mode
random`) on the UDP the box sends and receives. Needs root, iproute2, iptables.

`LinkWatch` samples one box of a session: what its encoder is asked for and sends (the box's
call telemetry), how many of its pictures the bridge decodes, and what the composed picture it
receives is encoded at (the aiortc bridge's one adaptive rate, or the Janus backend's full or
light rendition, whichever the box receives) and the box receives of it.
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


def _loss_rules(ns: Netns, loss: float) -> list[list[str]]:
    tail = ["-p", "udp", "-m", "statistic", "--mode", "random", "--probability", f"{loss:.4f}",
            "-j", "DROP"]
    return [["OUTPUT", "-o", ns.ns_if, *tail], ["INPUT", "-i", ns.ns_if, *tail]]


def _bucket(rate_kbit: int, queue_ms: int) -> list[str]:
    burst = max(3200, rate_kbit * 1000 // 8 // 50)  # 20 ms of tokens, at least two packets
    return ["root", "tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst), "latency",
            f"{queue_ms}ms"]


def limit(ns: Netns, uplink_kbit: int, loss: float = 0.0, *, downlink_kbit: int | None = None,
          queue_ms: int = QUEUE_MS) -> None:
    """What the box sends limited to `uplink_kbit` (and what it receives to `downlink_kbit`),
    each with a queue of `queue_ms`; `loss` of its UDP lost at random both ways."""
    _run(ns, "tc", "qdisc", "replace", "dev", ns.ns_if, *_bucket(uplink_kbit, queue_ms))
    if downlink_kbit is not None:
        result = subprocess.run(["tc", "qdisc", "replace", "dev", ns.host_if,
                                 *_bucket(downlink_kbit, queue_ms)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NetnsError(f"tc on {ns.host_if}: {result.stderr.strip()}")
    if loss > 0:
        for rule in _loss_rules(ns, loss):
            _run(ns, "iptables", "-I", *rule)


def lift(ns: Netns, loss: float = 0.0) -> None:
    """Back to the plain veth: no rate limit, no loss."""
    _run(ns, "tc", "qdisc", "del", "dev", ns.ns_if, "root", check=False)
    subprocess.run(["tc", "qdisc", "del", "dev", ns.host_if, "root"], capture_output=True,
                   check=False)
    if loss > 0:
        for rule in _loss_rules(ns, loss):
            _run(ns, "iptables", "-D", *rule, check=False)


@contextlib.contextmanager
def poor_link(ns: Netns, uplink_kbit: int, loss: float = 0.0, *,
              downlink_kbit: int | None = None) -> Iterator[None]:
    limit(ns, uplink_kbit, loss, downlink_kbit=downlink_kbit)
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
    composed_kbps: float | None = None  # the encoder target of the composed picture it gets
    received_fps: float | None = None  # the composed pictures the box decodes
    frozen_s: int = 0  # whole seconds in which the bridge decoded none of the box's pictures
    loss_received: float | None = None  # the share of the composed picture's packets it lost

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {"phase": self.name, "seconds": round(self.seconds, 1), "frames": self.frames,
                "fps_at_bridge": round(self.fps, 2), "target_kbps": self.target_kbps,
                "sent_kbps": self.sent_kbps, "heights": sorted(set(self.heights)),
                "composed_kbps": self.composed_kbps, "received_fps": self.received_fps,
                "loss_received": self.loss_received,
                "frozen_s": self.frozen_s}


class LinkWatch:
    """Samples one box in a session, once a second."""

    def __init__(self, controller: Any, session_id: str, device: str) -> None:
        self._controller = controller
        self._session_id = session_id
        self._device = device
        self._last_frames = 0

    def qos(self) -> dict[str, Any]:
        device = self._controller.registry.get(self._device)
        return dict((device.extra.get("call_qos") or {}) if device else {})

    def composed_kbps(self) -> float | None:
        session = self._controller.bridge.session(self._session_id)
        per_point = getattr(session, "composed_bitrate", None)
        if per_point is not None:
            return round(float(per_point(self._device)) / 1000, 1)
        target = getattr(session, "target_bitrate", None)
        return None if target is None else round(target() / 1000, 1)

    def frames(self) -> int:
        """Decoded pictures since the last call (a rejoin restarts the bridge's count): the
        aiortc bridge's decoder, or the Janus backend's compositor, whichever decodes them."""
        session = self._controller.bridge.session(self._session_id)
        count = 0
        if session is not None and hasattr(session, "members"):
            member = session.members.get(self._device)
            count = member.frames_received if member is not None else 0
        elif session is not None and hasattr(session, "compositor"):
            feed = session.compositor.feeds.get(self._device)
            count = feed.frames if feed is not None else 0
        delta = count - self._last_frames if count >= self._last_frames else count
        self._last_frames = count
        return delta

    async def phase(self, name: str, seconds: float) -> Phase:
        self.frames()
        targets: list[float] = []
        sent: list[float] = []
        heights: list[int] = []
        composed: list[float] = []
        received: list[float] = []
        lost: list[float] = []
        frames = frozen = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(1.0)
            new = self.frames()
            frames += new
            frozen += new == 0
            qos = self.qos()
            if qos.get("target_kbps") is not None:
                targets.append(float(qos["target_kbps"]))
            if qos.get("kbps_sent") is not None:
                sent.append(float(qos["kbps_sent"]))
            if qos.get("video_height"):
                heights.append(int(qos["video_height"]))
            if qos.get("fps_received") is not None:
                received.append(float(qos["fps_received"]))
            if qos.get("loss_received") is not None:
                lost.append(float(qos["loss_received"]))
            kbps = self.composed_kbps()
            if kbps is not None:
                composed.append(kbps)
        return Phase(name, time.monotonic() - started, frames, _median(targets),
                     _median(sent), heights, _median(composed), _median(received), frozen,
                     None if not lost else round(statistics.median(lost), 3))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
