"""The rule that moves a point between the full and the light composed picture, fed synthetic
call-quality reports (one a second unless said): hysteresis both ways, no flapping."""

from __future__ import annotations

import itertools
import random

from tiepdan.controller.sessions.bridge.rendition import (
    MAX_HOLD_FACTOR,
    RenditionRule,
    Switch,
)

POOR = 0.15
HOLD = 20.0


def feed(rule: RenditionRule, start: float, losses: list[float | None],
         step: float = 1.0) -> list[tuple[float, Switch]]:
    """Report `losses` from `start` on; the switches, with when."""
    switches = []
    for i, loss in enumerate(losses):
        now = start + i * step
        switch = rule.report(now, loss)
        if switch is not None:
            switches.append((now, switch))
    return switches


def test_random_loss_under_the_threshold_never_moves_a_point() -> None:
    rng = random.Random(14)
    rule = RenditionRule(POOR, HOLD)
    # 5 % random loss (which a lighter stream would not cure), seen through reports of 150
    # packets each (5 s of the light picture, or one of the full one at 1.5 Mbit/s).
    losses: list[float | None] = [sum(rng.random() < 0.05 for _ in range(150)) / 150
                                  for _ in range(720)]
    assert max(x for x in losses if x is not None) >= POOR / 2  # noisy, as reports are
    assert feed(rule, 0.0, losses, step=5.0) == []
    assert rule.rendition == "full"


def test_one_poor_report_is_not_enough_two_running_are() -> None:
    rule = RenditionRule(POOR, HOLD)
    assert feed(rule, 0.0, [0.0, 0.4, 0.0, 0.4, 0.0]) == []
    assert rule.rendition == "full"
    switches = feed(rule, 10.0, [0.4, 0.5])
    assert [(t, s.to) for t, s in switches] == [(11.0, "light")]
    assert "loss_received 50%/40% in 2 reports" in switches[0][1].reason
    assert rule.rendition == "light"


def test_no_report_of_loss_is_no_fact_about_the_link() -> None:
    rule = RenditionRule(POOR, HOLD)
    assert feed(rule, 0.0, [0.4, None, None, 0.0]) == []
    assert feed(rule, 10.0, [0.4, None, 0.4]) != []  # None does not break a poor run
    assert rule.rendition == "light"
    assert feed(rule, 20.0, [None] * 100) == []  # nor make a clear stretch
    assert rule.rendition == "light"


def test_back_to_full_only_after_a_clear_stretch_as_long_as_the_hold() -> None:
    rule = RenditionRule(POOR, HOLD)
    feed(rule, 0.0, [0.5, 0.5])
    # Loss between half the threshold and the threshold is not clear: it stays light.
    assert feed(rule, 2.0, [0.1] * 60) == []
    # A clear stretch that a lossy report interrupts starts again from there.
    assert feed(rule, 62.0, [0.0] * 15 + [0.1] + [0.0] * 15) == []
    switches = feed(rule, 93.0, [0.0] * 10)
    assert [s.to for _, s in switches] == ["full"]
    # The stretch began at the first clear report after the interruption (t=78).
    assert switches[0][0] == 78.0 + HOLD
    assert rule.rendition == "full"


def test_a_link_that_stays_poor_does_not_flap() -> None:
    """Full is lost on this link, light is clean: every try of full fails, and the tries get
    rarer (the hold doubles each time, up to MAX_HOLD_FACTOR), never more often than that."""
    rule = RenditionRule(POOR, HOLD)
    switches: list[tuple[float, Switch]] = []
    now = 0.0
    while now < 3600:
        loss = 0.6 if rule.rendition == "full" else 0.0
        switch = rule.report(now, loss)
        if switch is not None:
            switches.append((now, switch))
        now += 1.0
    tries = [t for t, s in switches if s.to == "full"]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == sorted(gaps), gaps
    assert min(gaps) > HOLD and max(gaps) <= HOLD * MAX_HOLD_FACTOR + 3, gaps
    assert rule.hold == HOLD * MAX_HOLD_FACTOR
    # Without the doubling it would have tried every ~HOLD seconds: 160 switches an hour.
    assert len(switches) < 60, len(switches)
    assert all("after trying full" in s.reason for _, s in switches[1:] if s.to == "light")


def test_a_link_that_holds_full_earns_the_base_hold_back() -> None:
    rule = RenditionRule(POOR, HOLD)
    feed(rule, 0.0, [0.5, 0.5])
    feed(rule, 2.0, [0.0] * 21)  # back to full at t=22
    assert rule.rendition == "full"
    feed(rule, 23.0, [0.5, 0.5])  # the try failed: light, hold doubled
    assert rule.rendition == "light" and rule.hold == 2 * HOLD
    feed(rule, 25.0, [0.0] * 41)  # back to full at t=65
    assert rule.rendition == "full"
    feed(rule, 66.0, [0.0] * 60)  # full holds for longer than the hold
    assert rule.hold == HOLD
    switches = feed(rule, 126.0, [0.5, 0.5])
    assert [s.to for _, s in switches] == ["light"]
    assert "after trying full" not in switches[0][1].reason
