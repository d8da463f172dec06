"""Adaptive bitrate for a pre-encoded H.264 sender: what the far end's RTCP feedback allows.

aiortc hands a receiver's REMB to its sender's own encoder (`encoder.target_bitrate`), which a
pre-encoded stream (`PacketTrack`) does not use, and keeps receiver reports to itself. So
`watch_feedback` taps the sender's RTCP handler, and a `BitrateController` turns what it sees
into a target the encoder outside the sender follows:

- REMB (the bridge's delay-based estimate: aiortc's receiver sends one when abs-send-time is
  negotiated, which aiortc always offers; Janus sends its room cap) bounds the target from above;
- receiver reports give a loss- and delay-based bound of our own (as in Google congestion
  control: above 10 % loss cut by half the loss, below 2 % grow, in between hold; a round trip
  grown well past the least seen means a queue is filling, so cut), which is all there is when
  REMB is absent;
- the target stays within [floor, ceiling], and the picture steps down a `ladder` of sizes and
  frame rates when the bitrate cannot keep the current rung's floor (720p -> 480p -> 360p ->
  360p at half rate). It steps back up after the link has been clean (no loss over 10 %, as
  a congested queue would show, and no queue) for a while and the target is within reach of
  the rung above: a REMB is at most 1.5x what arrives, so a small picture that cannot fill
  the target would otherwise hold the estimate (and itself) down for good; the bigger
  picture's own bits then show whether the link carries it: for `PROBE_S` after a step up
  the target is held at the new rung's floor while the link stays clean, and a step up that
  fails makes the next wait twice as long.

`watch_feedback` also bounds the sender's retransmissions (aiortc resends every packet a NACK
names, however often): on a congested link resends would crowd out the new pictures they are
meant to repair, so they get a share of the target (`RTX_SHARE`) and the rest are not resent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

log = logging.getLogger(__name__)

LOSS_HIGH = 0.10
LOSS_LOW = 0.02
GROWTH = 1.08  # per receiver report (aiortc sends one every 0.5..1.5 s), GCC's 8 %/s
FAST_GROWTH = 1.5  # ... while a fresh REMB says there is room: the delay estimate leads
DELAY_CUT = 0.85
QUEUE_SLACK_S = 0.25  # round trip over the least seen by this much: a queue is building
REMB_STALE_S = 5.0  # a REMB older than this no longer bounds anything
TOP_KEPT = 0.5  # a ceiling under the top rung's floor keeps the full picture down to half of it
STEP_DOWN_HOLD_S = 1.0  # below a rung's floor this long: step down
STEP_UP_HOLD_S = 4.0  # a clean link this long, and the rung above within reach: step up
STEP_UP_HOLD_MAX_S = 32.0  # ... doubling after each step up the link could not carry
STEP_UP_FAILED_S = 10.0  # a step down this soon after a step up means it failed
STEP_UP_REACH = 0.75  # the target is at least this share of the rung above's floor
PROBE_S = 3.0  # after a step up, the new rung's floor is tried this long (unless loss/queue)
RTX_SHARE = 0.2  # of the target, for retransmissions
RTX_BURST_S = 0.2  # ... saved up for at most this long


@dataclass(frozen=True)
class Rung:
    """One picture size and frame rate, kept while the target is at least `floor` bit/s."""

    width: int
    height: int
    fps: int
    floor: int


def ladder(width: int, height: int, fps: int, *, floor: int, ceiling: int) -> list[Rung]:
    """Full size, two thirds, half, then half at half the frame rate.

    The bottom rung's floor is `floor`; the others' scale with their pixel rate (720p30 needs 8x
    what 360p15 does), and all shrink together when half the `ceiling` is below the top rung's
    floor, so a modest configured bitrate still shows the full picture on a good link and down
    to half of it.
    """
    shapes = [(1.0, 1.0), (2 / 3, 1.0), (0.5, 1.0), (0.5, 0.5)]
    bottom = _even(width * 0.5) * _even(height * 0.5) * max(1, round(fps * 0.5))
    rungs: list[Rung] = []
    for scale, rate in shapes:
        w, h, f = _even(width * scale), _even(height * scale), max(1, round(fps * rate))
        if rungs and (w, h, f) == (rungs[-1].width, rungs[-1].height, rungs[-1].fps):
            continue
        rungs.append(Rung(w, h, f, round(floor * w * h * f / bottom)))
    shrink = min(1.0, ceiling * TOP_KEPT / rungs[0].floor)
    return [Rung(r.width, r.height, r.fps, max(floor, round(r.floor * shrink))) for r in rungs]


def _even(value: float) -> int:
    return max(2, int(value) & ~1)


class BitrateController:
    """The send bitrate and rung that RTCP feedback allows; fed by `watch_feedback`."""

    def __init__(self, rungs: list[Rung], *, floor: int, ceiling: int,
                 clock: Callable[[], float] = time.monotonic, name: str = "video") -> None:
        if not rungs or floor <= 0 or ceiling < floor:
            raise ValueError(f"need rungs and 0 < floor <= ceiling, got {floor}..{ceiling}")
        self.rungs = rungs
        self.floor, self.ceiling = floor, ceiling
        self.name = name
        self.clock = clock
        self.reports = 0
        self.steps = 0
        self.reset()

    def reset(self) -> None:
        """Start again from the ceiling and the full picture (a new session, maybe on another
        link); a rejoin within a session keeps what the last attempt had learnt."""
        self.target = self.ceiling
        self.rung_index = 0
        self.remb: int | None = None
        self._remb_at = -REMB_STALE_S
        self._loss_bound = float(self.ceiling)
        self._least_rtt: float | None = None
        self._below_since: float | None = None
        self._clean_since: float | None = None  # receiver reports have to show it
        self._up_hold = STEP_UP_HOLD_S
        self._stepped_up_at: float | None = None
        self._probe_until = 0.0

    @property
    def rung(self) -> Rung:
        return self.rungs[self.rung_index]

    def on_remb(self, bitrate: int) -> None:
        self.remb, self._remb_at = max(0, bitrate), self.clock()
        self._update()

    def on_report(self, fraction_lost: float, rtt: float | None) -> None:
        """One receiver report block about our stream: loss since the last one (0..1), and the
        round trip aiortc derived from it (seconds), if any."""
        self.reports += 1
        now = self.clock()
        queueing = False
        if rtt is not None and rtt > 0:
            self._least_rtt = rtt if self._least_rtt is None else min(self._least_rtt, rtt)
            queueing = rtt > self._least_rtt + QUEUE_SLACK_S
        if fraction_lost > LOSS_HIGH or queueing:  # random loss under 10 % is no congestion
            self._clean_since = None
        elif self._clean_since is None:
            self._clean_since = now
        if fraction_lost > LOSS_HIGH:
            self._loss_bound = self.target * (1 - 0.5 * fraction_lost)
        elif queueing:
            self._loss_bound = self.target * DELAY_CUT
        elif fraction_lost < LOSS_LOW:
            remb = self._fresh_remb(now)
            growth = FAST_GROWTH if remb is not None and remb > self._loss_bound else GROWTH
            self._loss_bound = self._loss_bound * growth
        self._loss_bound = min(float(self.ceiling), max(float(self.floor), self._loss_bound))
        self._update()

    def _fresh_remb(self, now: float) -> int | None:
        return self.remb if now - self._remb_at <= REMB_STALE_S else None

    def _update(self) -> None:
        now = self.clock()
        bound = self._loss_bound
        remb = self._fresh_remb(now)
        if remb is not None:
            bound = min(bound, remb)
        if now < self._probe_until and self._clean_since is not None:
            bound = max(bound, self.rung.floor)  # probing the rung just stepped up to
        self.target = int(min(self.ceiling, max(self.floor, bound)))
        self._choose_rung(now)

    def _choose_rung(self, now: float) -> None:
        index = self.rung_index
        if self.target < self.rung.floor and index + 1 < len(self.rungs):
            self._below_since = self._below_since if self._below_since is not None else now
            if now - self._below_since >= STEP_DOWN_HOLD_S:
                if self._stepped_up_at is not None and \
                        now - self._stepped_up_at < STEP_UP_FAILED_S:
                    self._up_hold = min(STEP_UP_HOLD_MAX_S, self._up_hold * 2)
                self._step(index + 1, now)
            return
        self._below_since = None
        if index > 0 and self._clean_since is not None and \
                now - self._clean_since >= self._up_hold and \
                self.target >= self.rungs[index - 1].floor * STEP_UP_REACH:
            if self._stepped_up_at is not None and \
                    now - self._stepped_up_at >= STEP_UP_FAILED_S:
                self._up_hold = STEP_UP_HOLD_S  # the last step up held
            self._step(index - 1, now)
            self._stepped_up_at = now
            self._probe_until = now + PROBE_S
            self._clean_since = now  # the next step waits for the new rung to prove itself
            self.target = int(min(self.ceiling, max(self.target, self.rung.floor)))

    def _step(self, index: int, now: float) -> None:
        old, self.rung_index = self.rung, index
        self._below_since = None
        self.steps += 1
        log.info("bitrate_step stream=%s from=%dx%d@%d to=%dx%d@%d target_kbps=%d",
                 self.name, old.width, old.height, old.fps, self.rung.width, self.rung.height,
                 self.rung.fps, self.target // 1000)


def watch_feedback(sender: RTCRtpSender, controller: BitrateController) -> None:
    """Feed `controller` with the REMB and receiver reports that reach `sender`.

    aiortc's transport routes each RTCP packet to `sender._handle_rtcp_packet`; wrapping that
    one method (after aiortc's own handling, which computes the round trip) is the narrowest
    hook, as `rtc.on_keyframe_request` is for PLI.
    """
    handle = sender._handle_rtcp_packet
    retransmit = sender._retransmit
    budget = Budget(controller)

    async def handle_and_feed(packet: Any) -> None:
        await handle(packet)
        try:
            _feed(sender, controller, packet)
        except Exception as exc:  # a malformed report must not take the sender down
            log.warning("bitrate_feedback_unusable stream=%s error=%s", controller.name,
                        f"{type(exc).__name__}: {exc}"[:200])

    async def retransmit_within_budget(sequence_number: int) -> None:
        if budget.take():
            await retransmit(sequence_number)

    setattr(sender, "_handle_rtcp_packet", handle_and_feed)  # noqa: B010 - a method
    setattr(sender, "_retransmit", retransmit_within_budget)  # noqa: B010


class Budget:
    """Retransmissions allowed: `RTX_SHARE` of the target, in packets of ~1200 bytes."""

    PACKET_BITS = 1200 * 8

    def __init__(self, controller: BitrateController) -> None:
        self._controller = controller
        self._tokens = 0.0
        self._at = controller.clock()
        self.sent = 0
        self.refused = 0

    def take(self) -> bool:
        now = self._controller.clock()
        rate = self._controller.target * RTX_SHARE
        self._tokens = min(max(2 * self.PACKET_BITS, rate * RTX_BURST_S),
                           self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= self.PACKET_BITS:
            self._tokens -= self.PACKET_BITS
            self.sent += 1
            return True
        self.refused += 1
        return False


def _feed(sender: RTCRtpSender, controller: BitrateController, packet: Any) -> None:
    if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
        for report in packet.reports:
            if report.ssrc == sender._ssrc:
                rtt = getattr(sender, "_RTCRtpSender__rtt", None)  # aiortc's smoothed RTT
                controller.on_report(report.fraction_lost / 256, rtt)
    elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
        try:
            bitrate, ssrcs = unpack_remb_fci(packet.fci)
        except ValueError:
            return  # another application's feedback
        if sender._ssrc in ssrcs:
            controller.on_remb(bitrate)
