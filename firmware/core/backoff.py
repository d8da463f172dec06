"""Exponential back-off with equal jitter: the one retry pause of the code base.

Every retry loop (broker reconnect, enrollment, uploads, update downloads) pauses by this, so a
province's boxes that lost their link together come back spread out (never a thundering herd)
and never wait longer than their ceiling. The loops differ in shape (a connection that stays
up, a pass over many files), so they own their loop and ask this for the pause; a retrying
decorator (tenacity) would fit only the simplest of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    first: float
    most: float
    failures: int = 0

    def next(self) -> float:
        """The pause after one more failure: half the current step, plus up to half again."""
        step = min(self.first * 2.0 ** min(self.failures, 32), self.most)
        self.failures += 1
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.failures = 0
