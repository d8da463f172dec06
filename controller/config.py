"""The controller's TOML configuration: every setting, its default and its check, in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

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


class ControllerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    controller: ControllerSection = ControllerSection()
    mqtt: MqttSection = MqttSection()
    http: HttpSection = HttpSection()
    registry: RegistrySection = RegistrySection()
    log: LogSection = LogSection()

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
