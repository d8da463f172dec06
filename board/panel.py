"""The front panel: three arcade buttons, four status LEDs and the UPS power-fail line."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from gpiozero import LED, Button, Device, DigitalInputDevice
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory

from tiepdan.board.errors import BoardError
from tiepdan.board.profile import BUTTONS, LEDS, BoardProfile

__all__ = ["PATTERNS", "Panel"]

log = logging.getLogger(__name__)

PATTERNS = ("off", "on", "blink", "fast_blink", "pulse_error")
BOUNCE_S = 0.02
# Mains flicker should not wake the firmware for every dip.
POWER_BOUNCE_S = 0.1
# pulse_error: three quick flashes, then a pause, so "disk full" cannot be mistaken for blink.
PULSE_STEP_S = 0.15
PULSE_ERROR = (True, False, True, False, True, False, False, False, False, False, False)


class Panel:
    """Buttons and LEDs of one box, over gpiozero's pin factories.

    Callbacks run on gpiozero's event thread (on the simulated board: on the thread that
    calls `press`), never on the asyncio loop; hop with `loop.call_soon_threadsafe`.
    """

    def __init__(self, profile: BoardProfile, pin_factory: Factory | None = None) -> None:
        self.profile = profile
        self._own_factory = pin_factory is None and profile.simulated
        self._factory = MockFactory() if self._own_factory else pin_factory
        factory = self._factory
        self._lock = threading.Lock()
        self._button_callbacks: list[Callable[[str], None]] = []
        self._power_callbacks: list[Callable[[bool], None]] = []
        self._patterns = dict.fromkeys(LEDS, "off")
        self._buttons: dict[str, Button] = {}
        self._leds: dict[str, LED] = {}
        self._power: DigitalInputDevice | None = None
        try:
            for name in BUTTONS:
                button = Button(
                    profile.buttons[name], pull_up=True, bounce_time=BOUNCE_S, pin_factory=factory
                )
                button.when_pressed = self._pressed_handler(name)
                self._buttons[name] = button
            for name in LEDS:
                self._leds[name] = LED(profile.leds[name], pin_factory=factory)
            if profile.power_fail is not None:
                self._power = self._power_input(profile.power_fail, factory)
        except Exception as exc:
            self.close()
            raise BoardError(
                f"cannot claim the panel GPIOs of profile {profile.name}: {exc}"
            ) from exc
        log.info(
            "panel_open profile=%s factory=%s power_fail=%s",
            profile.name,
            type(self.factory).__name__,
            profile.power_fail,
        )

    @property
    def factory(self) -> Factory:
        """The pin factory in use; gpiozero's default one unless given or simulated."""
        return self._factory if self._factory is not None else Device.pin_factory

    def _power_input(self, pin: int, factory: Factory | None) -> DigitalInputDevice:
        # Pull towards "mains present" so a loose wire never fakes an outage.
        high = self.profile.power_fail_active_high
        device = DigitalInputDevice(
            pin, pull_up=not high, bounce_time=POWER_BOUNCE_S, pin_factory=factory
        )
        device.when_activated = lambda: self._power_changed(True)
        device.when_deactivated = lambda: self._power_changed(False)
        return device

    def _pressed_handler(self, name: str) -> Callable[[], None]:
        def pressed() -> None:
            log.info("button_pressed button=%s", name)
            with self._lock:
                callbacks = list(self._button_callbacks)
            for callback in callbacks:
                try:
                    callback(name)
                except Exception:
                    log.exception("button_callback_failed button=%s", name)

        return pressed

    def _power_changed(self, lost: bool) -> None:
        log.warning("mains_power lost=%s", lost)
        with self._lock:
            callbacks = list(self._power_callbacks)
        for callback in callbacks:
            try:
                callback(lost)
            except Exception:
                log.exception("power_callback_failed lost=%s", lost)

    def on_button(self, callback: Callable[[str], None]) -> None:
        """Call `callback("call" | "mute" | "end")` on every press (from gpiozero's thread)."""
        with self._lock:
            self._button_callbacks.append(callback)

    def on_power_fail(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(True)` when mains is lost and `callback(False)` when it returns."""
        if self._power is None:
            raise BoardError(f"profile {self.profile.name} has no power-fail input")
        with self._lock:
            self._power_callbacks.append(callback)

    def power_lost(self) -> bool | None:
        """Whether the box runs on battery now; None when the profile has no power-fail input."""
        return None if self._power is None else bool(self._power.is_active)

    def is_pressed(self, name: str) -> bool:
        return bool(self._button(name).is_pressed)

    def set_led(self, name: str, pattern: str) -> None:
        led = self._led(name)
        if pattern not in PATTERNS:
            raise ValueError(f"unknown LED pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        # A running pulse_error source would fight any new pattern; stop it first.
        led.source = None
        if pattern == "off":
            led.off()
        elif pattern == "on":
            led.on()
        elif pattern == "blink":
            led.blink(on_time=0.5, off_time=0.5)
        elif pattern == "fast_blink":
            led.blink(on_time=0.1, off_time=0.1)
        else:
            led.source_delay = PULSE_STEP_S
            led.source = itertools.cycle(PULSE_ERROR)
        self._patterns[name] = pattern
        log.debug("led_set led=%s pattern=%s", name, pattern)

    def led_state(self, name: str) -> str:
        """The pattern last set on the LED (not whether it happens to be lit right now)."""
        self._led(name)
        return self._patterns[name]

    def led_states(self) -> dict[str, str]:
        return dict(self._patterns)

    def led_is_lit(self, name: str) -> bool:
        """The LED's pin right now, e.g. mid-blink."""
        return bool(self._led(name).is_lit)

    def press(self, name: str, hold: float = 0.05) -> None:
        """Press and release a button on the simulated board; blocks for `hold` seconds."""
        pin = self._button(name).pin
        if not isinstance(self.factory, MockFactory):
            raise BoardError("press() only works on the simulated board (MockFactory pins)")
        pin.drive_low()
        time.sleep(hold)
        pin.drive_high()

    def simulate_power(self, lost: bool) -> None:
        """Drive the simulated UPS power-fail line, as if mains went away (or came back)."""
        if self._power is None:
            raise BoardError(f"profile {self.profile.name} has no power-fail input")
        if not isinstance(self.factory, MockFactory):
            raise BoardError("simulate_power() only works on the simulated board")
        if lost == self.profile.power_fail_active_high:
            self._power.pin.drive_high()
        else:
            self._power.pin.drive_low()

    def close(self) -> None:
        devices: list[Button | LED | DigitalInputDevice | None] = [
            *self._buttons.values(),
            *self._leds.values(),
            self._power,
        ]
        for device in devices:
            if device is not None:
                device.close()
        self._buttons.clear()
        self._leds.clear()
        self._power = None
        if self._own_factory and self._factory is not None:
            self._factory.close()
        log.info("panel_closed profile=%s", self.profile.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _button(self, name: str) -> Button:
        try:
            return self._buttons[name]
        except KeyError:
            raise ValueError(f"unknown button {name!r}; known: {', '.join(BUTTONS)}") from None

    def _led(self, name: str) -> LED:
        try:
            return self._leds[name]
        except KeyError:
            raise ValueError(f"unknown LED {name!r}; known: {', '.join(LEDS)}") from None
