"""hardware.md's pinout table is what technicians wire; it must match the profiles exactly."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from tiepdan.board.profile import BoardProfile, load_profile

HARDWARE_MD = Path(__file__).resolve().parents[2] / "hardware.md"
NONE = "\N{EN DASH}"  # how the table marks "no GPIO" / "no wire"
HEADER = "| Physical pin | BCM | Function | Wire colour | Part |"


@dataclass(frozen=True)
class Row:
    physical: int
    bcm: int | None
    function: str
    colour: str
    part: str

    @property
    def key(self) -> str | None:
        match = re.match(r"`([a-z_.]+)`", self.function)
        return match.group(1) if match else None


def pinout() -> list[Row]:
    lines = HARDWARE_MD.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER) + 2  # skip the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        physical, bcm, function, colour, part = (c.strip() for c in line.strip("|").split("|"))
        rows.append(Row(int(physical), None if bcm == NONE else int(bcm), function, colour, part))
    return rows


def profile_pins(profile: BoardProfile) -> dict[str, int]:
    pins = {f"button.{name}": pin for name, pin in profile.buttons.items()}
    pins |= {f"led.{name}": pin for name, pin in profile.leds.items()}
    if profile.power_fail is not None:
        pins["power_fail"] = profile.power_fail
    return pins


def test_table_matches_the_rpi4_profile() -> None:
    documented = {row.key: row.bcm for row in pinout() if row.key}
    assert documented == profile_pins(load_profile("rpi4"))


@pytest.mark.parametrize("name", ["rpi5", "cm4", "sim"])
def test_one_harness_fits_every_board(name: str) -> None:
    assert profile_pins(load_profile(name)) == profile_pins(load_profile("rpi4"))


def test_physical_pins_carry_the_stated_gpio() -> None:
    header = MockFactory(revision="c03111").board_info.headers["J8"].pins  # Pi 4 Model B
    for row in pinout():
        expected = "GND" if row.bcm is None else f"GPIO{row.bcm}"
        assert header[row.physical].name == expected, row


def test_no_gpio_is_used_twice() -> None:
    gpios = [row.bcm for row in pinout() if row.bcm is not None]
    assert len(gpios) == len(set(gpios))


def test_every_wire_has_its_own_colour() -> None:
    wired = [row.colour for row in pinout() if row.key and row.colour != NONE]
    assert len(wired) == 7  # three buttons, four LEDs
    assert len(set(wired)) == len(wired)
