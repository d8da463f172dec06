"""Which rendition of the composed picture a point receives: full, or light while its downlink
is poor.

Janus cannot thin one non-simulcast stream per subscriber and aiortc cannot send simulcast, so
the Janus backend publishes the composed picture twice ("simulcast by hand") and moves each
point between the two. The facts are the box's own call telemetry: the share of the composed
picture's packets it lost over each report (`loss_received`). A downlink that cannot carry the
full picture loses a large share of it; random loss a lighter stream would not cure stays
under `poor_loss`.

Hysteresis: `POOR_REPORTS` reports running at or over `poor_loss` move the point to light; it
tries full again only after `hold` seconds of reports under half of `poor_loss`. A try that
fails (poor again within the hold) doubles the next hold, up to `MAX_HOLD_FACTOR` times; a
stretch on full as long as the hold earns the base hold back. Light has no probe of spare
capacity (nothing about the link shows while the stream fits), so trying full is the probe,
and the doubling keeps a link that stays poor from flapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Rendition = Literal["full", "light"]

POOR_REPORTS = 2
MAX_HOLD_FACTOR = 8


@dataclass(frozen=True)
class Switch:
    to: Rendition
    reason: str


class RenditionRule:
    """One point's rendition, fed its call-quality reports in order."""

    def __init__(self, poor_loss: float, hold: float) -> None:
        self.poor_loss = poor_loss
        self.base_hold = hold
        self.hold = hold
        self.rendition: Rendition = "full"
        self._poor: list[float] = []  # the running poor reports' losses, on full
        self._clear_since: float | None = None  # the clear stretch on light began
        self._full_since: float | None = None  # back on full after light, at

    def report(self, now: float, loss: float | None) -> Switch | None:
        """The switch this report calls for, if any (`now`: monotonic seconds)."""
        if loss is None:  # nothing received in the interval: no fact about the link
            return None
        if self.rendition == "full":
            return self._on_full(now, loss)
        return self._on_light(now, loss)

    def _on_full(self, now: float, loss: float) -> Switch | None:
        if loss < self.poor_loss:
            self._poor.clear()
            if self._full_since is not None and now - self._full_since >= self.hold:
                self.hold, self._full_since = self.base_hold, None  # full holds again
            return None
        self._poor.append(loss)
        if len(self._poor) < POOR_REPORTS:
            return None
        failed_try = self._full_since is not None and now - self._full_since < self.hold
        if failed_try:
            self.hold = min(self.hold * 2, self.base_hold * MAX_HOLD_FACTOR)
        reason = (f"loss_received {max(self._poor):.0%}/{min(self._poor):.0%} in "
                  f"{len(self._poor)} reports" + (" after trying full" if failed_try else ""))
        self.rendition, self._poor, self._clear_since, self._full_since = \
            "light", [], None, None
        return Switch("light", reason)

    def _on_light(self, now: float, loss: float) -> Switch | None:
        if loss >= self.poor_loss / 2:
            self._clear_since = None
            return None
        if self._clear_since is None:
            self._clear_since = now
            return None
        clear = now - self._clear_since
        if clear < self.hold:
            return None
        self.rendition, self._clear_since, self._full_since = "full", None, now
        return Switch("full", f"loss_received under {self.poor_loss / 2:.1%} for {clear:.0f}s")
