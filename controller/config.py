"""The controller's TOML configuration: every setting, its default and its check, in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from tiepdan.firmware.config import LogSection, MqttSection, Port, read_toml
from tiepdan.firmware.protocol import ID_PATTERN

DEFAULT_PATH = Path("/etc/tiepdan/controller.toml")


class ControllerSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] = "central"
    data_dir: str = "/var/lib/tiepdan-controller"
    command_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0


class HttpSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8600


class RegistrySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    flush_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    events_kept: Annotated[int, msgspec.Meta(ge=100)] = 100_000


class BridgeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backend: Literal["aiortc"] = "aiortc"
    width: Annotated[int, msgspec.Meta(ge=160, le=3840, multiple_of=2)] = 1280
    height: Annotated[int, msgspec.Meta(ge=90, le=2160, multiple_of=2)] = 720
    fps: Annotated[int, msgspec.Meta(ge=1, le=60)] = 15
    bitrate: Annotated[int, msgspec.Meta(ge=100_000, le=50_000_000)] = 1_500_000
    keyframe_interval: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 4.0
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast"] = "superfast"
    media_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 3.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0


class SessionsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timezone: str = "Asia/Ho_Chi_Minh"
    ring_timeout: Annotated[float, msgspec.Meta(ge=5, le=86400)] = 600.0
    invite_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    start_timeout: Annotated[float, msgspec.Meta(ge=60, le=7 * 86400)] = 4 * 3600.0


class ControllerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    controller: ControllerSection = ControllerSection()
    mqtt: MqttSection = MqttSection()
    http: HttpSection = HttpSection()
    registry: RegistrySection = RegistrySection()
    log: LogSection = LogSection()
    bridge: BridgeSection = BridgeSection()
    sessions: SessionsSection = SessionsSection()

    @property
    def data_dir(self) -> Path:
        return Path(self.controller.data_dir)

    def tls_file(self, configured: str, default_name: str) -> Path:
        return Path(configured) if configured else self.data_dir / "tls" / default_name

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.http.host in ("0.0.0.0", "::", "") else self.http.host
        return f"http://{host}:{self.http.port}"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"


def config_path(given: Path | None) -> Path:
    return given or Path(os.environ.get("TIEPDAN_CONTROLLER_CONFIG", DEFAULT_PATH))


def load_config(path: Path) -> ControllerConfig:
    return read_toml(path, ControllerConfig)
