"""Board profiles: which pins, camera and audio a box has, kept as data in TOML files.

A profile is data rather than code so that a technician can describe a new carrier board
without touching the firmware (see `load_profile_file`).
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from tiepdan.board.errors import BoardError

__all__ = [
    "BUTTONS",
    "LEDS",
    "VIDEO_ENCODERS",
    "AudioSpec",
    "BoardError",
    "BoardProfile",
    "CameraSpec",
    "detect_profile",
    "known_profiles",
    "load_profile",
    "load_profile_file",
]

log = logging.getLogger(__name__)

BUTTONS = ("call", "mute", "end")
LEDS = ("online", "in_call", "muted", "recording")
CAMERA_BACKENDS = ("picamera2", "v4l2", "synthetic")
AUDIO_BACKENDS = ("pyaudio", "synthetic")
VIDEO_ENCODERS = ("picamera2-h264", "libx264")
# BCM GPIO numbers reachable on the 40-pin header of every supported board.
HEADER_GPIOS = range(28)

MODEL_PATH = Path("/proc/device-tree/model")
ENV_VAR = "TIEPDAN_BOARD"

_MODELS = (
    (re.compile(r"^Raspberry Pi 4 Model B\b"), "rpi4"),
    (re.compile(r"^Raspberry Pi 5\b"), "rpi5"),
    (re.compile(r"^Raspberry Pi Compute Module 4\b"), "cm4"),
)

CameraBackend = Literal["picamera2", "v4l2", "synthetic"]
AudioBackend = Literal["pyaudio", "synthetic"]


@dataclass(frozen=True)
class CameraSpec:
    """`device` is the camera number for picamera2, a device path (or `format:url`) for v4l2."""

    backend: CameraBackend
    device: str
    width: int
    height: int
    fps: int
    # Synthetic camera only: sensor-like grain of this amplitude over the picture (0..64), so
    # an encoder has to spend bits as it would on a real camera (adaptive bitrate tests).
    grain: int = 0


@dataclass(frozen=True)
class AudioSpec:
    """Devices are PortAudio name substrings; "default" follows the system's default device."""

    backend: AudioBackend
    input_device: str
    output_device: str
    rate: int = 48000
    channels: int = 1


@dataclass(frozen=True)
class BoardProfile:
    """Everything the firmware needs to know about one kind of box. Pins are BCM numbers."""

    name: str
    description: str
    simulated: bool
    buttons: Mapping[str, int]
    leds: Mapping[str, int]
    power_fail: int | None
    camera: CameraSpec
    audio: AudioSpec
    video_encoder: str
    # Most UPS HATs (e.g. Geekworm X728's PLD line) drive the signal high on mains loss;
    # a dry-contact alarm wired to ground reads low instead.
    power_fail_active_high: bool = False


def known_profiles() -> list[str]:
    """Names of the profiles shipped with the firmware."""
    folder = resources.files("tiepdan.board") / "profiles"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def detect_profile(model_path: Path = MODEL_PATH) -> str:
    """Name the profile for the board we run on, from the device tree's model string."""
    try:
        model = model_path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError as exc:
        raise BoardError(
            f"cannot detect the board: {model_path} is unreadable ({exc.strerror}); "
            f"set board.profile (or {ENV_VAR}) to one of: {', '.join(known_profiles())}"
        ) from exc
    for pattern, name in _MODELS:
        if pattern.search(model):
            log.info("board_detected model=%r profile=%s", model, name)
            return name
    raise BoardError(
        f"cannot detect the board: model {model!r} has no profile; "
        f"set board.profile (or {ENV_VAR}) to one of: {', '.join(known_profiles())} "
        "or to the path of a custom profile TOML"
    )


def load_profile(
    name: str = "auto",
    *,
    env: Mapping[str, str] = os.environ,
    model_path: Path = MODEL_PATH,
) -> BoardProfile:
    """Load a shipped profile by name; "auto" means $TIEPDAN_BOARD, else the detected board.

    A name that ends in ".toml" is read as a custom profile file.
    """
    if name == "auto":
        name = env.get(ENV_VAR) or detect_profile(model_path)
    if name.endswith(".toml"):
        return load_profile_file(Path(name))
    known = known_profiles()
    if name not in known:
        raise BoardError(f"unknown board profile {name!r}; known profiles: {', '.join(known)}")
    resource = resources.files("tiepdan.board") / "profiles" / f"{name}.toml"
    with resources.as_file(resource) as path:
        return load_profile_file(path)


def load_profile_file(path: Path) -> BoardProfile:
    """Load and check a profile TOML, e.g. a technician's profile for a custom carrier board."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoardError(f"{path}: cannot read board profile ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: not valid TOML ({exc})") from exc
    profile = _Reader(path, data).profile()
    log.info("board_profile name=%s file=%s simulated=%s", profile.name, path, profile.simulated)
    return profile


_TOP_KEYS = (
    "name",
    "description",
    "simulated",
    "video_encoder",
    "power_fail",
    "power_fail_active_high",
    "buttons",
    "leds",
    "camera",
    "audio",
)
_CAMERA_KEYS = ("backend", "device", "width", "height", "fps", "grain")
_REQUIRED: Any = object()
_AUDIO_KEYS = ("backend", "input_device", "output_device", "rate", "channels")


class _Reader:
    """Pulls typed values out of parsed TOML, naming the file and key in every error."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, problem: str) -> BoardError:
        return BoardError(f"{self.path}: key '{key}' {problem}")

    def get(self, key: str, kind: type, *, default: Any = _REQUIRED) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not _REQUIRED:
                    return default
                raise self.fail(key, "is missing")
            node = node[part]
        # bool is an int subclass in Python; a pin number of `true` is a typo, not a pin.
        if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
            raise self.fail(key, f"must be {kind.__name__}, got {type(node).__name__}")
        return node

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = cast(str, self.get(key, str))
        if value not in allowed:
            raise self.fail(key, f"is {value!r}; allowed: {', '.join(allowed)}")
        return value

    def positive(self, key: str, *, default: Any = _REQUIRED) -> int:
        value = cast(int, self.get(key, int, default=default))
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def pin(self, key: str) -> int:
        value = cast(int, self.get(key, int))
        if value not in HEADER_GPIOS:
            raise self.fail(key, f"is GPIO {value}; header GPIOs are BCM 0-27")
        return value

    def pins(self, table: str, names: tuple[str, ...]) -> Mapping[str, int]:
        self.only(table, names)
        return MappingProxyType({name: self.pin(f"{table}.{name}") for name in names})

    def only(self, table: str, allowed: tuple[str, ...]) -> None:
        """Reject unknown keys: a typo like `power_fial` must not silently drop a setting."""
        node = self.data if not table else cast(dict[str, Any], self.get(table, dict))
        unknown = sorted(set(node) - set(allowed))
        if unknown:
            key = f"{table}.{unknown[0]}" if table else unknown[0]
            raise self.fail(key, f"is unknown; expected {', '.join(allowed)}")

    def profile(self) -> BoardProfile:
        self.only("", _TOP_KEYS)
        self.only("camera", _CAMERA_KEYS)
        self.only("audio", _AUDIO_KEYS)
        buttons = self.pins("buttons", BUTTONS)
        leds = self.pins("leds", LEDS)
        power_fail = None
        if "power_fail" in self.data:
            power_fail = self.pin("power_fail")
        wired = {f"buttons.{n}": p for n, p in buttons.items()}
        wired |= {f"leds.{n}": p for n, p in leds.items()}
        if power_fail is not None:
            wired["power_fail"] = power_fail
        used: dict[int, str] = {}
        for key, pin in wired.items():
            if pin in used:
                raise self.fail(key, f"reuses GPIO {pin}, already taken by '{used[pin]}'")
            used[pin] = key
        camera = CameraSpec(
            backend=cast(CameraBackend, self.choice("camera.backend", CAMERA_BACKENDS)),
            device=self.get("camera.device", str),
            width=self.positive("camera.width"),
            height=self.positive("camera.height"),
            fps=self.positive("camera.fps"),
            grain=self.get("camera.grain", int, default=0),
        )
        if not 0 <= camera.grain <= 64:
            raise self.fail("camera.grain", f"must be 0..64, got {camera.grain}")
        for key, size in (("camera.width", camera.width), ("camera.height", camera.height)):
            if size % 2:
                raise self.fail(key, f"must be even for 4:2:0 video, got {size}")
        audio = AudioSpec(
            backend=cast(AudioBackend, self.choice("audio.backend", AUDIO_BACKENDS)),
            input_device=self.get("audio.input_device", str),
            output_device=self.get("audio.output_device", str),
            rate=self.positive("audio.rate", default=48000),
            channels=self.positive("audio.channels", default=1),
        )
        return BoardProfile(
            name=self.get("name", str),
            description=self.get("description", str),
            simulated=self.get("simulated", bool),
            buttons=buttons,
            leds=leds,
            power_fail=power_fail,
            power_fail_active_high=self.get("power_fail_active_high", bool, default=False),
            camera=camera,
            audio=audio,
            video_encoder=self.choice("video_encoder", VIDEO_ENCODERS),
        )
