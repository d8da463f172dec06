"""The box agent's configuration (`/etc/tiepdan/agent.toml`): every setting and its default.

The sections both sides share (device, MQTT, logs) and the TOML reader live in
`tiepdan.firmware.core.config`; what only a box has is here.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from tiepdan.firmware.core.config import (
    ConfigError,
    DeviceSection,
    LogSection,
    MqttSection,
    read_toml,
)
from tiepdan.firmware.core.mqtt import TlsSettings

DEFAULT_PATH = Path("/etc/tiepdan/agent.toml")


class BoardSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    profile: str = "auto"


class TelemetrySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0


class StateSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dir: str = "/var/lib/tiepdan"


class CallSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    join_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    media_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 3.0
    qos_interval: Annotated[float, msgspec.Meta(ge=0.5, le=600)] = 5.0
    video_bitrate: Annotated[int, msgspec.Meta(ge=100_000, le=20_000_000)] = 1_000_000
    keyframe_interval: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 4.0
    # Adaptive bitrate: the camera's bitrate follows the bridge's RTCP feedback between
    # min_video_bitrate and video_bitrate, and its picture steps down a size/frame-rate ladder
    # when the link cannot carry the current one (false: a constant video_bitrate).
    adaptive_bitrate: bool = True
    min_video_bitrate: Annotated[int, msgspec.Meta(ge=20_000, le=20_000_000)] = 150_000

    def __post_init__(self) -> None:
        if self.min_video_bitrate > self.video_bitrate:
            raise ValueError(f"min_video_bitrate ({self.min_video_bitrate}) is above "
                             f"video_bitrate ({self.video_bitrate})")


class UpdateSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Updates (issue 5): where the slots live, what the box trusts, how patient it is."""

    root: str = "/opt/tiepdan"
    trusted_root: str = "/etc/tiepdan/ota-root.json"
    repository: str = ""  # written at enrollment; empty: the repository each job names
    boot_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    health_timeout: Annotated[float, msgspec.Meta(ge=5, le=3600)] = 180.0
    download_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    retry_delay: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    http_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    clock: Literal["timesyncd", "trust"] = "timesyncd"
    clock_root: str = "/"
    # The updater process owns the slots (`tiepdan-updater`); the agent asks it on this socket.
    # Empty: the agent does the updater's work itself (development and simulated fleets only:
    # it then needs write access to `root`); so does an agent that may write `root` and finds
    # nothing listening here (a box whose package predates the updater).
    updater_socket: str = "/run/tiepdan-updater/updater.sock"
    updater_state_dir: str = "/var/lib/tiepdan-updater"  # TUF metadata, downloads
    agent_user: str = "tiepdan"  # the only user (name or uid) the updater answers


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


class RenewalSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Certificate renewal over mutual TLS (firmware/renewal/)."""

    url: Annotated[str, msgspec.Meta(pattern=r"^(https://[^\s]+)?\Z")] = ""
    check_interval: Annotated[float, msgspec.Meta(ge=0.05, le=86400)] = 6 * 3600.0
    renew_fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 1 / 3
    retry_min: Annotated[float, msgspec.Meta(ge=0.05, le=86400)] = 60.0
    retry_max: Annotated[float, msgspec.Meta(ge=0.05, le=86400)] = 6 * 3600.0


Window = Annotated[str, msgspec.Meta(
    pattern=r"^(([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d)?\Z")]


class ScreenSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The hall's screen and sounds (issue 11); the controller may set language, volume and
    office hours through desired state."""

    display: Literal["auto", "kmsdrm", "simulated", "none"] = "auto"
    width: Annotated[int, msgspec.Meta(ge=320, le=3840, multiple_of=2)] = 1280
    height: Annotated[int, msgspec.Meta(ge=240, le=2160, multiple_of=2)] = 720
    language: Literal["vi", "en"] = "vi"
    volume: Annotated[int, msgspec.Meta(ge=0, le=100)] = 70
    timezone: Annotated[str, msgspec.Meta(min_length=1)] = "Asia/Ho_Chi_Minh"
    office_hours: Window = "07:00-17:30"
    office_days: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=7)]],
                           msgspec.Meta(max_length=7)] = msgspec.field(
        default_factory=lambda: [1, 2, 3, 4, 5])
    outside_hours: Literal["on", "dim", "blank"] = "dim"
    dim: Annotated[float, msgspec.Meta(ge=0.05, le=1)] = 0.25
    chime_every: Annotated[float, msgspec.Meta(ge=1, le=60)] = 4.0
    offline_after: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 20.0
    disk_low_mb: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1024
    after_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 15.0
    cec: bool = False
    cec_device: str = "/dev/cec0"
    snapshot: str = ""  # a PNG file the simulated display's picture is written to (demos)


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: DeviceSection
    board: BoardSection = BoardSection()
    mqtt: MqttSection = MqttSection()
    telemetry: TelemetrySection = TelemetrySection()
    state: StateSection = StateSection()
    log: LogSection = LogSection()
    call: CallSection = CallSection()
    ota: UpdateSection = UpdateSection()
    recording: RecordingSection = RecordingSection()
    renewal: RenewalSection = RenewalSection()
    screen: ScreenSection = ScreenSection()

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir)

    @property
    def recording_dir(self) -> Path:
        return Path(self.recording.dir) if self.recording.dir else self.state_dir / "recordings"

    def tls_file(self, configured: str, default_name: str) -> Path:
        """TLS material defaults to where provisioning writes it, under the state directory."""
        return Path(configured) if configured else self.state_dir / "tls" / default_name

    def box_tls(self) -> TlsSettings:
        """The box's TLS identity, the files `[mqtt]` names: also what the box shows the
        archive and the OTA repository over HTTPS (whether or not MQTT itself uses TLS)."""
        m = self.mqtt
        return TlsSettings(ca_file=self.tls_file(m.ca_file, "ca.pem"),
                           cert_file=self.tls_file(m.cert_file, "device.pem"),
                           key_file=self.tls_file(m.key_file, "device.key"))




def load_config(path: Path = DEFAULT_PATH) -> AgentConfig:
    config = read_toml(path, AgentConfig)
    if config.mqtt.reconnect_min > config.mqtt.reconnect_max:
        raise ConfigError(f"config {path}: mqtt.reconnect_min: must not exceed mqtt.reconnect_max")
    try:
        zoneinfo.ZoneInfo(config.screen.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config {path}: screen.timezone: unknown time zone "
                          f"{config.screen.timezone!r}") from None
    return config
