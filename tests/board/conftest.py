"""Fixtures for the board tests: profiles and simulated panels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from tiepdan.board.panel import Panel
from tiepdan.board.profile import BoardProfile, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "board" / "profiles"


@pytest.fixture
def sim() -> BoardProfile:
    return load_profile("sim")


@pytest.fixture
def make_panel() -> Iterator[Callable[..., tuple[Panel, MockFactory]]]:
    panels: list[Panel] = []

    def make(profile: BoardProfile, revision: str | None = None) -> tuple[Panel, MockFactory]:
        factory = MockFactory(revision=revision)
        panel = Panel(profile, pin_factory=factory)
        panels.append(panel)
        return panel, factory

    yield make
    for panel in panels:
        panel.close()
