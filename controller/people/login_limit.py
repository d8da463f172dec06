"""The login rate limit: a few failures per account and per address, then a pause.

Failures are counted in a sliding window per user name and per peer address separately, so
guessing one account from many addresses and many accounts from one address are both slowed.
"""

from __future__ import annotations

import time
from collections import deque


class LoginLimit:
    def __init__(self, failures: int, window: float) -> None:
        self.failures = failures
        self.window = window
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._seen.setdefault(key, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def retry_after(self, user: str, peer: str) -> float:
        """Seconds until another attempt is allowed (0: now)."""
        now = time.monotonic()
        wait = 0.0
        for key in (f"u:{user}", f"p:{peer}"):
            times = self._recent(key, now)
            if len(times) >= self.failures:
                wait = max(wait, self.window - (now - times[0]))
        return wait

    def failed(self, user: str, peer: str) -> None:
        now = time.monotonic()
        for key in (f"u:{user}", f"p:{peer}"):
            self._recent(key, now).append(now)
        if len(self._seen) > 100_000:
            self._seen.clear()

    def succeeded(self, user: str) -> None:
        self._seen.pop(f"u:{user}", None)
