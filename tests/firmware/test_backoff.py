"""The one back-off: grows by doubling, never passes its ceiling, is jittered, resets."""

from __future__ import annotations

from tiepdan.firmware.core.backoff import Backoff


def test_pauses_double_within_equal_jitter_up_to_the_ceiling() -> None:
    backoff = Backoff(first=1.0, most=8.0)
    steps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for step in steps:
        pause = backoff.next()
        assert step / 2 <= pause <= step
    assert backoff.failures == len(steps)


def test_jitter_spreads_boxes_that_failed_together() -> None:
    pauses = {round(Backoff(first=10.0, most=10.0).next(), 6) for _ in range(50)}
    assert len(pauses) > 40


def test_reset_starts_again_from_the_first_step() -> None:
    backoff = Backoff(first=1.0, most=60.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0


def test_a_long_outage_does_not_overflow() -> None:
    backoff = Backoff(first=0.5, most=float("inf"), failures=10_000)
    assert backoff.next() < float("inf")
