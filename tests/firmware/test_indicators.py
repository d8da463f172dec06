"""What the LEDs show for each agent state, on the real panel over gpiozero's MockFactory."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import Panel
from tiepdan.board.profile import load_profile
from tiepdan.firmware.agent.indicators import Indicators, Status, patterns


@pytest.mark.parametrize(("status", "expected"), [
    (Status(), {"online": "blink", "in_call": "off", "muted": "off", "recording": "off"}),
    (Status(connected=True, invited=True), {"online": "on", "in_call": "blink"}),
    (Status(connected=True, joining=True, invited=True), {"in_call": "fast_blink"}),
    (Status(connected=True, in_call=True, muted=True, recording=True),
     {"in_call": "on", "muted": "on", "recording": "on"}),
    (Status(connected=True, recording=True, alarm=True), {"recording": "pulse_error"}),
])
def test_patterns(status: Status, expected: dict[str, str]) -> None:
    shown = patterns(status)
    assert {k: shown[k] for k in expected} == expected


def test_indicators_drive_the_panel() -> None:
    profile = load_profile("sim")
    with Panel(profile, pin_factory=MockFactory()) as panel:
        indicators = Indicators(panel)
        indicators.update(connected=True, in_call=True, muted=True)
        assert panel.led_states() == {"online": "on", "in_call": "on", "muted": "on",
                                      "recording": "off"}
        assert panel.led_is_lit("muted") and not panel.led_is_lit("recording")
        with pytest.raises(TypeError):
            indicators.update(on_fire=True)
