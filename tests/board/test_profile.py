from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.board.conftest import PROFILES
from tiepdan.board.profile import (
    BUTTONS,
    LEDS,
    BoardError,
    detect_profile,
    known_profiles,
    load_profile,
    load_profile_file,
)

# Pins an I2S audio HAT, an I2C UPS/RTC, a UART console or SPI would need.
RESERVED = {0, 1, 2, 3, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21}


def test_shipped_profiles_are_the_four_boards() -> None:
    assert known_profiles() == ["cm4", "rpi4", "rpi5", "sim"]


@pytest.mark.parametrize("name", ["cm4", "rpi4", "rpi5", "sim"])
def test_every_shipped_profile_loads_and_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert tuple(profile.buttons) == BUTTONS
    assert tuple(profile.leds) == LEDS
    pins = [*profile.buttons.values(), *profile.leds.values(), profile.power_fail]
    assert len(set(pins)) == len(pins)
    assert profile.camera.width % 2 == 0 and profile.camera.height % 2 == 0
    assert profile.audio.rate == 48000 and profile.audio.channels == 1


@pytest.mark.parametrize("name", ["cm4", "rpi4", "rpi5"])
def test_real_boards_keep_bus_pins_free(name: str) -> None:
    profile = load_profile(name)
    used = {*profile.buttons.values(), *profile.leds.values()}
    assert not used & RESERVED


def test_encoders_follow_the_hardware() -> None:
    assert load_profile("rpi4").video_encoder == "picamera2-h264"
    assert load_profile("cm4").video_encoder == "picamera2-h264"
    rpi5 = load_profile("rpi5")
    assert rpi5.video_encoder == "libx264"
    assert rpi5.camera.height <= 720


def test_sim_profile_mirrors_rpi4_pins_with_synthetic_parts() -> None:
    sim, rpi4 = load_profile("sim"), load_profile("rpi4")
    assert sim.simulated and not rpi4.simulated
    assert dict(sim.buttons) == dict(rpi4.buttons)
    assert dict(sim.leds) == dict(rpi4.leds)
    assert sim.power_fail == rpi4.power_fail
    assert (sim.camera.backend, sim.camera.width, sim.camera.height, sim.camera.fps) == (
        "synthetic",
        640,
        360,
        15,
    )
    assert sim.audio.backend == "synthetic"
    assert sim.video_encoder == "libx264"


def test_profiles_are_immutable() -> None:
    profile = load_profile("sim")
    with pytest.raises(TypeError):
        profile.buttons["call"] = 5  # type: ignore[index]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("Raspberry Pi 4 Model B Rev 1.5\x00", "rpi4"),
        ("Raspberry Pi 5 Model B Rev 1.0\x00", "rpi5"),
        ("Raspberry Pi Compute Module 4 Rev 1.1\x00", "cm4"),
    ],
)
def test_detect_profile_from_device_tree_model(tmp_path: Path, model: str, expected: str) -> None:
    model_path = tmp_path / "model"
    model_path.write_bytes(model.encode())
    assert detect_profile(model_path) == expected


@pytest.mark.parametrize(
    "model",
    [
        "Raspberry Pi 3 Model B Plus Rev 1.3",
        "Raspberry Pi 400 Rev 1.0",
        "Raspberry Pi Compute Module 4S Rev 1.0",
    ],
)
def test_detect_profile_refuses_other_boards(tmp_path: Path, model: str) -> None:
    model_path = tmp_path / "model"
    model_path.write_text(model)
    with pytest.raises(BoardError, match=r"board\.profile") as info:
        detect_profile(model_path)
    assert model in str(info.value)


def test_detect_profile_without_device_tree(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model"
    with pytest.raises(BoardError, match=r"board\.profile") as info:
        detect_profile(missing)
    assert str(missing) in str(info.value)
    assert "rpi4" in str(info.value)


def test_auto_detects_the_board(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    assert load_profile("auto", env={}, model_path=model).name == "rpi5"


def test_environment_overrides_auto(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_text("Raspberry Pi 4 Model B Rev 1.5\x00")
    profile = load_profile("auto", env={"TIEPDAN_BOARD": "sim"}, model_path=model)
    assert profile.name == "sim"


def test_explicit_name_wins_over_environment(tmp_path: Path) -> None:
    profile = load_profile("cm4", env={"TIEPDAN_BOARD": "sim"}, model_path=tmp_path / "none")
    assert profile.name == "cm4"


def test_unknown_name_lists_the_known_profiles() -> None:
    with pytest.raises(BoardError, match="unknown board profile 'rpi3'") as info:
        load_profile("rpi3", env={})
    for name in ["cm4", "rpi4", "rpi5", "sim"]:
        assert name in str(info.value)


def test_custom_profile_file_by_name_or_path(tmp_path: Path) -> None:
    custom = tmp_path / "carrier.toml"
    text = (PROFILES / "rpi4.toml").read_text()
    text = text.replace('name = "rpi4"', 'name = "carrier-v2"').replace("call = 22", "call = 5")
    custom.write_text(text)
    assert load_profile_file(custom).buttons["call"] == 5
    assert load_profile(str(custom), env={}).name == "carrier-v2"


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = (PROFILES / "sim.toml").read_text()
    assert re.search(re.escape(old), text), old
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ("fps = 15", "", "camera.fps", "is missing"),
        ("width = 640", 'width = "640"', "camera.width", "must be int, got str"),
        ("simulated = true", 'simulated = "yes"', "simulated", "must be bool"),
        ("call = 22", "call = true", "buttons.call", "must be int, got bool"),
        ("mute = 23", "mute = 40", "buttons.mute", "BCM 0-27"),
        ("muted = 4", "muted = 22", "leds.muted", "reuses GPIO 22"),
        ("end = 24", "end = 24\nhangup = 26", "buttons.hangup", "is unknown"),
        ('backend = "synthetic"', 'backend = "webcam"', "camera.backend", "allowed: picamera2"),
        ('video_encoder = "libx264"', 'video_encoder = "vp8"', "video_encoder", "allowed"),
        ("height = 360", "height = 0", "camera.height", "must be positive"),
        ("height = 360", "height = 361", "camera.height", "must be even"),
        ("[leds]", "[lamps]", "lamps", "is unknown"),
        ("power_fail = 6", "power_fial = 6", "power_fial", "is unknown"),
        ("fps = 15", "fps = 15\nzoom = 2", "camera.zoom", "is unknown"),
        ("[audio]", "[speaker]", "speaker", "is unknown"),
    ],
)
def test_broken_profile_names_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(BoardError) as info:
        load_profile_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert problem in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = _broken(tmp_path, "[camera]", "[camera")
    with pytest.raises(BoardError, match="not valid TOML") as info:
        load_profile_file(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_board_error(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="cannot read"):
        load_profile_file(tmp_path / "absent.toml")


def test_profile_without_power_fail_pin(tmp_path: Path) -> None:
    path = _broken(tmp_path, "power_fail = 6\n", "")
    profile = load_profile_file(path)
    assert profile.power_fail is None
