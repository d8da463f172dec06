"""The agent's TOML configuration: every setting, its default and its check, in one place.

README.md documents each setting; tests/firmware/test_config.py keeps the two in step.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from tiepdan.firmware.core.mqtt import LinkSettings, TlsSettings
from tiepdan.firmware.protocol import ID_PATTERN

T = TypeVar("T")

DEFAULT_PATH = Path("/etc/tiepdan/agent.toml")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class DeviceSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    kind: Literal["central", "province", "commune"] = "commune"
    province: Annotated[str, msgspec.Meta(max_length=16)] = ""
    commune: Annotated[str, msgspec.Meta(max_length=16)] = ""


class BoardSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    profile: str = "auto"


class MqttSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1)] = "localhost"
    port: Port = 8883
    keepalive: Annotated[int, msgspec.Meta(ge=2, le=600)] = 10
    session_expiry: Annotated[int, msgspec.Meta(ge=0, le=7 * 86400)] = 4 * 3600
    reconnect_min: Seconds = 0.5
    reconnect_max: Seconds = 4.0
    connect_timeout: Seconds = 10.0
    tls: bool = True
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


def link_settings(mqtt: MqttSection, client_id: str,
                  tls_file: Callable[[str, str], Path], name: str) -> LinkSettings:
    """The link a `[mqtt]` section describes; `tls_file(configured, default)` places TLS files."""
    tls = None
    if mqtt.tls:
        tls = TlsSettings(
            ca_file=tls_file(mqtt.ca_file, "ca.pem"),
            cert_file=tls_file(mqtt.cert_file, f"{name}.pem"),
            key_file=tls_file(mqtt.key_file, f"{name}.key"),
        )
    return LinkSettings(
        host=mqtt.host, port=mqtt.port, client_id=client_id, keepalive=mqtt.keepalive,
        session_expiry=mqtt.session_expiry, reconnect_min=mqtt.reconnect_min,
        reconnect_max=mqtt.reconnect_max, connect_timeout=mqtt.connect_timeout, tls=tls,
    )


class TelemetrySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0


class StateSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dir: str = "/var/lib/tiepdan"


class LogSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"


class CallSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    join_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    media_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 3.0
    qos_interval: Annotated[float, msgspec.Meta(ge=0.5, le=600)] = 5.0
    video_bitrate: Annotated[int, msgspec.Meta(ge=100_000, le=20_000_000)] = 1_000_000
    keyframe_interval: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 4.0


class OtaSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Updates (issue 5): where the slots live, what the box trusts, how patient it is."""

    root: str = "/opt/tiepdan"
    trusted_root: str = "/etc/tiepdan/ota-root.json"
    boot_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    health_timeout: Annotated[float, msgspec.Meta(ge=5, le=3600)] = 180.0
    download_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    retry_delay: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    http_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    clock: Literal["timesyncd", "trust"] = "timesyncd"
    clock_root: str = "/"


class RecordingSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Recording (issue 4): segments, disk policy, and the archive that takes them."""

    enabled: bool = True
    dir: str = ""  # default <state dir>/recordings; sealed segments and manifests only
    segment_seconds: Annotated[float, msgspec.Meta(ge=0.5, le=10)] = 2.0
    # "copy": the composed H.264 as it arrives (no decode, no encode); "reencode": decoded
    # frames encoded again at received_fps / received_width x received_height.
    received: Literal["copy", "reencode"] = "copy"
    received_fps: Annotated[int, msgspec.Meta(ge=1, le=30)] = 10
    received_width: Annotated[int, msgspec.Meta(ge=160, le=1920, multiple_of=2)] = 640
    received_height: Annotated[int, msgspec.Meta(ge=90, le=1080, multiple_of=2)] = 360
    max_session_minutes: Annotated[int, msgspec.Meta(ge=1, le=24 * 60)] = 240
    reserve_mb: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 200
    archive_url: str = ""  # e.g. https://central.example:8600; empty: keep segments until set
    upload_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    upload_retry_max: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    delete_grace: Annotated[float, msgspec.Meta(ge=0, le=90 * 86400)] = 86400.0


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: DeviceSection
    board: BoardSection = BoardSection()
    mqtt: MqttSection = MqttSection()
    telemetry: TelemetrySection = TelemetrySection()
    state: StateSection = StateSection()
    log: LogSection = LogSection()
    call: CallSection = CallSection()
    ota: OtaSection = OtaSection()
    recording: RecordingSection = RecordingSection()

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir)

    @property
    def recording_dir(self) -> Path:
        return Path(self.recording.dir) if self.recording.dir else self.state_dir / "recordings"

    def tls_file(self, configured: str, default_name: str) -> Path:
        """TLS material defaults to where provisioning writes it, under the state directory."""
        return Path(configured) if configured else self.state_dir / "tls" / default_name


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"(unknown|required) field `(?P<field>[^`]+)`")


def read_toml(path: Path, kind: type[T]) -> T:
    """Load a TOML file into `kind`, turning every failure into one clear ConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {path}: {_explain(str(exc))}") from None


def _explain(message: str) -> str:
    match = _AT.match(message)
    assert match is not None
    what, where = match["what"], (match["path"] or "").lstrip(".")
    field = _FIELD.search(what)
    if field:
        key = f"{where}.{field['field']}" if where else field["field"]
        problem = "unknown setting" if field[1] == "unknown" else "required setting missing"
        return f"{key}: {problem}"
    return f"{where or '(top level)'}: {what[0].lower()}{what[1:]}" if what else message


def load_config(path: Path = DEFAULT_PATH) -> AgentConfig:
    config = read_toml(path, AgentConfig)
    if config.mqtt.reconnect_min > config.mqtt.reconnect_max:
        raise ConfigError(f"config {path}: mqtt.reconnect_min: must not exceed mqtt.reconnect_max")
    return config
