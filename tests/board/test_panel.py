from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import PATTERNS, Panel
from tiepdan.board.profile import BUTTONS, LEDS, BoardError, BoardProfile, load_profile

MakePanel = Callable[..., tuple[Panel, MockFactory]]

# Revision codes so MockFactory describes the real board: Pi 4B 4 GB, Pi 5 4 GB, CM4 4 GB.
REVISIONS = {"rpi4": "c03111", "rpi5": "c04170", "cm4": "c03141"}


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 10.0) -> None:
    """Poll until `condition` holds; the deadline only catches hangs, it measures nothing."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_simulated_profile_gets_its_own_mock_factory(sim: BoardProfile) -> None:
    with Panel(sim) as first, Panel(sim) as second:
        assert isinstance(first.factory, MockFactory)
        assert first.factory is not second.factory


@pytest.mark.parametrize("button", BUTTONS)
def test_press_reports_the_button(sim: BoardProfile, button: str) -> None:
    with Panel(sim) as panel:
        got: list[tuple[str, str]] = []
        panel.on_button(lambda name: got.append((name, threading.current_thread().name)))
        panel.press(button, hold=0)
        assert [name for name, _ in got] == [button]
        assert not panel.is_pressed(button)


def test_every_callback_runs_even_if_one_fails(sim: BoardProfile) -> None:
    with Panel(sim) as panel:
        got: list[str] = []

        def broken(name: str) -> None:
            raise RuntimeError("callback bug")

        panel.on_button(broken)
        panel.on_button(got.append)
        panel.press("end", hold=0)
        panel.press("call", hold=0)
        assert got == ["end", "call"]


def test_held_button_reads_pressed(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, factory = make_panel(sim)
    factory.pin(sim.buttons["mute"]).drive_low()
    assert panel.is_pressed("mute")
    assert not panel.is_pressed("call")
    factory.pin(sim.buttons["mute"]).drive_high()


def test_unknown_names_are_rejected(sim: BoardProfile) -> None:
    with Panel(sim) as panel:
        with pytest.raises(ValueError, match="unknown button 'hangup'"):
            panel.press("hangup")
        with pytest.raises(ValueError, match="unknown LED 'power'"):
            panel.set_led("power", "on")
        with pytest.raises(ValueError, match="unknown LED pattern 'strobe'"):
            panel.set_led("online", "strobe")


def test_led_states_start_off_and_follow_set_led(sim: BoardProfile) -> None:
    with Panel(sim) as panel:
        assert panel.led_states() == dict.fromkeys(LEDS, "off")
        panel.set_led("online", "on")
        panel.set_led("recording", "pulse_error")
        panel.set_led("in_call", "fast_blink")
        assert panel.led_state("online") == "on"
        assert panel.led_states() == {
            "online": "on",
            "in_call": "fast_blink",
            "muted": "off",
            "recording": "pulse_error",
        }


def test_on_and_off_drive_the_pin(make_panel: MakePanel, sim: BoardProfile) -> None:
    panel, factory = make_panel(sim)
    pin = factory.pin(sim.leds["muted"])
    panel.set_led("muted", "on")
    assert panel.led_is_lit("muted") and pin.state
    panel.set_led("muted", "off")
    assert not panel.led_is_lit("muted") and not pin.state


@pytest.mark.parametrize("pattern", ["blink", "fast_blink"])
def test_blinking_toggles_the_pin(make_panel: MakePanel, sim: BoardProfile, pattern: str) -> None:
    panel, factory = make_panel(sim)
    pin = factory.pin(sim.leds["online"])
    pin.clear_states()
    panel.set_led("online", pattern)
    wait_for(lambda: len(pin.states) >= 3, f"{pattern} to toggle the LED")
    assert [state.state for state in pin.states[:3]] == [False, True, False]


def test_pulse_error_is_three_flashes_then_a_pause(
    make_panel: MakePanel, sim: BoardProfile
) -> None:
    panel, factory = make_panel(sim)
    pin = factory.pin(sim.leds["recording"])
    pin.clear_states()
    panel.set_led("recording", "pulse_error")
    # Two whole cycles (three rises and falls each) and the first rise of a third.
    wait_for(lambda: len(pin.states) >= 1 + 2 * 6 + 1, "two pulse_error cycles")
    # A rising edge records how long the LED was dark before it; skip the idle time before
    # the first flash. The two longest dark spells are the pauses between bursts.
    rises = [state for state in pin.states[1:] if state.state]
    dark = [rise.timestamp for rise in rises[1:]]
    first, second = sorted(sorted(range(len(dark)), key=dark.__getitem__)[-2:])
    assert second - first == 3


def test_a_new_pattern_stops_the_previous_animation(
    make_panel: MakePanel, sim: BoardProfile
) -> None:
    panel, factory = make_panel(sim)
    pin = factory.pin(sim.leds["recording"])
    panel.set_led("recording", "pulse_error")
    wait_for(lambda: panel.led_is_lit("recording"), "pulse_error to light the LED")
    panel.set_led("recording", "on")
    pin.clear_states()
    # Longer than pulse_error's dark steps: a leftover animation would have switched it off.
    time.sleep(0.5)
    assert [state.state for state in pin.states] == [True]
    assert panel.led_is_lit("recording")


def test_power_fail_callbacks_follow_the_ups_line(sim: BoardProfile) -> None:
    with Panel(sim) as panel:
        events: list[bool] = []
        panel.on_power_fail(events.append)
        assert panel.power_lost() is False
        panel.simulate_power(lost=True)
        assert panel.power_lost() is True
        panel.simulate_power(lost=False)
        assert events == [True, False]
        assert panel.power_lost() is False


def test_x728_signals_power_loss_with_a_high_level(make_panel: MakePanel) -> None:
    rpi4 = load_profile("rpi4")
    panel, factory = make_panel(rpi4, REVISIONS["rpi4"])
    events: list[bool] = []
    panel.on_power_fail(events.append)
    factory.pin(6).drive_high()
    assert events == [True]


def test_dry_contact_signals_power_loss_by_pulling_low(make_panel: MakePanel) -> None:
    cm4 = load_profile("cm4")
    panel, factory = make_panel(cm4, REVISIONS["cm4"])
    events: list[bool] = []
    panel.on_power_fail(events.append)
    assert panel.power_lost() is False  # the pull-up reads "mains present"
    factory.pin(6).drive_low()
    factory.pin(6).drive_high()
    assert events == [True, False]


def test_profile_without_power_fail_input(sim: BoardProfile) -> None:
    no_ups = BoardProfile(**{**sim.__dict__, "power_fail": None})
    with Panel(no_ups) as panel:
        assert panel.power_lost() is None
        with pytest.raises(BoardError, match="no power-fail input"):
            panel.on_power_fail(lambda lost: None)


@pytest.mark.parametrize("name", ["rpi4", "rpi5", "cm4"])
def test_real_pin_maps_on_mock_pins(make_panel: MakePanel, name: str) -> None:
    profile = load_profile(name)
    panel, factory = make_panel(profile, REVISIONS[name])
    pressed: list[str] = []
    panel.on_button(pressed.append)
    for button, bcm in profile.buttons.items():
        factory.pin(bcm).drive_low()
        factory.pin(bcm).drive_high()
        assert pressed[-1] == button
    for led, bcm in profile.leds.items():
        panel.set_led(led, "on")
        assert factory.pin(bcm).state, led
        others = [factory.pin(p).state for n, p in profile.leds.items() if n != led]
        assert not any(others)
        panel.set_led(led, "off")
    assert pressed == list(BUTTONS)


def test_close_releases_the_pins(sim: BoardProfile) -> None:
    factory = MockFactory()
    Panel(sim, pin_factory=factory).close()
    with Panel(sim, pin_factory=factory) as again:
        again.set_led("online", "on")
        assert factory.pin(sim.leds["online"]).state


def test_clashing_pins_are_a_board_error(sim: BoardProfile) -> None:
    factory = MockFactory()
    with Panel(sim, pin_factory=factory), pytest.raises(BoardError, match="cannot claim"):
        Panel(sim, pin_factory=factory)


def test_every_pattern_is_accepted(sim: BoardProfile) -> None:
    with Panel(sim) as panel:
        for pattern in PATTERNS:
            panel.set_led("muted", pattern)
            assert panel.led_state("muted") == pattern
