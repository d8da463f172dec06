"""The controller's TOML configuration: every setting, its default and its check, in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from tiepdan.controller.connection import check_url
from tiepdan.firmware.core.config import LogSection, MqttSection, Port, read_toml
from tiepdan.firmware.protocol import ID_PATTERN

DEFAULT_PATH = Path("/etc/tiepdan/controller.toml")


class ControllerSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] = "central"
    data_dir: str = "/var/lib/tiepdan-controller"
    command_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0


class DatabaseSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the controller keeps its state: empty, the SQLite file `<data_dir>/controller.db`;
    a libpq `postgresql://` URL, PostgreSQL (see the README's "SQLite, and PostgreSQL")."""

    url: str = ""

    def __post_init__(self) -> None:
        check_url(self.url)


class HttpSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The admin API's listener: plain HTTP with the admin token, so loopback by default."""

    host: str = "127.0.0.1"
    port: Port = 8600


class BoxesSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The box-facing HTTPS listener (archive, OTA): mutual TLS with the provisioning CA."""

    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8601
    url: str = ""  # how boxes reach it; default https://<provisioning.broker_host>:<port>
    read_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    idle_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0


class RegistrySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    flush_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    events_kept: Annotated[int, msgspec.Meta(ge=100)] = 100_000


class BridgeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backend: Literal["aiortc", "janus"] = "aiortc"
    width: Annotated[int, msgspec.Meta(ge=160, le=3840, multiple_of=2)] = 1280
    height: Annotated[int, msgspec.Meta(ge=90, le=2160, multiple_of=2)] = 720
    fps: Annotated[int, msgspec.Meta(ge=1, le=60)] = 15
    bitrate: Annotated[int, msgspec.Meta(ge=100_000, le=50_000_000)] = 1_500_000
    keyframe_interval: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 4.0
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast"] = "superfast"
    # Adaptive bitrate of the composed picture (aiortc backend): it follows the slowest
    # receiver's RTCP feedback, but no lower than min_bitrate (false: a constant bitrate).
    adaptive_bitrate: bool = True
    min_bitrate: Annotated[int, msgspec.Meta(ge=50_000, le=50_000_000)] = 300_000
    # The Janus backend's light rendition of the composed picture, for points whose downlink
    # cannot carry the full one (`sessions/bridge/rendition.py`): encoded from the same composed
    # frame, only while a point receives it. A point moves to it after two call-quality reports
    # losing light_loss of the picture or more, back after light_hold seconds under half that.
    light_rendition: bool = True
    light_width: Annotated[int, msgspec.Meta(ge=160, le=3840, multiple_of=2)] = 640
    light_height: Annotated[int, msgspec.Meta(ge=90, le=2160, multiple_of=2)] = 360
    light_bitrate: Annotated[int, msgspec.Meta(ge=50_000, le=50_000_000)] = 300_000
    light_loss: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.15
    light_hold: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 20.0
    media_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 3.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # The Janus backend: its WebSocket API and the api_secret every request carries.
    janus_url: str = ""
    janus_api_secret: str = ""
    # NAT traversal: TURN servers (coturn) every point is given, with per-point credentials
    # from the shared secret (the TURN REST scheme), valid for turn_ttl seconds.
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = ""
    turn_ttl: Annotated[float, msgspec.Meta(ge=60, le=7 * 86400)] = 6 * 3600.0


class SessionsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timezone: str = "Asia/Ho_Chi_Minh"
    ring_timeout: Annotated[float, msgspec.Meta(ge=5, le=86400)] = 600.0
    invite_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    start_timeout: Annotated[float, msgspec.Meta(ge=60, le=7 * 86400)] = 4 * 3600.0


class ProvisioningSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Enrollment and the broker's security files (provisioning, issue 6)."""

    broker_host: str = ""
    broker_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    broker_dir: str = ""
    broker_reload: tuple[str, ...] = ("systemctl", "reload", "mosquitto")
    enroll_host: str = "0.0.0.0"
    enroll_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8443
    enroll_url: str = ""
    enroll_rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 1.0
    enroll_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    token_days: Annotated[float, msgspec.Meta(gt=0, le=365)] = 7.0
    # A box's certificate lives at most a year and is renewed over mutual TLS (renewal.py).
    cert_days: Annotated[float, msgspec.Meta(gt=0, le=366)] = 365
    # The central side's own certificates (broker, enrollment and renewal sites, controller).
    server_cert_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 825
    # nextUpdate of the CRL; it is re-signed every `crl_refresh_hours`, so the broker (which
    # refuses every client once the CRL is past nextUpdate) survives a controller outage of
    # about `crl_days` minus the refresh interval.
    crl_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 2.0
    crl_refresh_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 30)] = 4.0
    renew_host: str = "0.0.0.0"
    renew_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8444
    renew_url: str = ""


class OtaSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Updates (issue 5): the TUF repository served to boxes and the campaign engine."""

    repository: str = ""
    keys: str = ""
    public_url: str = ""
    tick: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    refresh_interval: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 3600.0


class ArchiveSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The recording archive (issue 4): where sealed segments rest and whom they are sealed to."""

    dir: str = ""  # default <data dir>/archive
    public_url: str = ""  # where boxes reach the archive; default: the HTTP address (http.*)
    recipients: tuple[str, ...] = ()  # age X25519 recipients ("age1..."); empty: see README
    # Without recipients, make and keep a decryption identity on the controller: trials only.
    trial_identity: bool = False
    escrow_recipient: str = ""
    max_segment_mb: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    record_bridge: bool = True
    segment_seconds: Annotated[float, msgspec.Meta(ge=0.5, le=10)] = 2.0
    close_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0


class ConsoleSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The web console and its people (issue 13): sign-in sessions and the login rate limit."""

    session_idle: Annotated[float, msgspec.Meta(ge=60, le=7 * 86400)] = 3600.0
    session_lifetime: Annotated[float, msgspec.Meta(ge=60, le=30 * 86400)] = 12 * 3600.0
    login_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    login_window: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    secure_cookies: bool = True
    language: Literal["vi", "en"] = "vi"
    timezone: str = "Asia/Ho_Chi_Minh"
    # HTTPS for people's browsers (camera access needs it off localhost): the same app, also
    # served with this certificate on https_host:https_port. Empty cert_file: plain HTTP only.
    https_host: str = "0.0.0.0"
    https_port: Port = 8643
    cert_file: str = ""
    key_file: str = ""
class HistorySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Health history tiers: bucket widths (seconds) and how long each is kept."""

    fine_step: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 10
    fine_keep_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 30)] = 24.0
    coarse_step: Annotated[int, msgspec.Meta(ge=2, le=86_400)] = 300
    coarse_keep_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 90.0
    flush_interval: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    max_points: Annotated[int, msgspec.Meta(ge=10, le=1_000_000)] = 30_000

    def __post_init__(self) -> None:
        if self.fine_step >= self.coarse_step or self.coarse_step % self.fine_step:
            raise ValueError("history.coarse_step must be a multiple of history.fine_step, "
                             "and larger")


class AlertsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The controller's own alert rules and where their notices go."""

    enabled: bool = True
    interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    webhook_url: str = ""
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    kept_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 90.0

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("alerts.webhook_url must be an http:// or https:// URL")


class ControllerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    controller: ControllerSection = ControllerSection()
    database: DatabaseSection = DatabaseSection()
    mqtt: MqttSection = MqttSection()
    http: HttpSection = HttpSection()
    boxes: BoxesSection = BoxesSection()
    registry: RegistrySection = RegistrySection()
    log: LogSection = LogSection()
    bridge: BridgeSection = BridgeSection()
    sessions: SessionsSection = SessionsSection()
    provisioning: ProvisioningSection = ProvisioningSection()
    ota: OtaSection = OtaSection()
    archive: ArchiveSection = ArchiveSection()
    console: ConsoleSection = ConsoleSection()
    history: HistorySection = HistorySection()
    alerts: AlertsSection = AlertsSection()

    @property
    def data_dir(self) -> Path:
        return Path(self.controller.data_dir)

    @property
    def controller_db(self) -> Path | str:
        """The controller's database: the SQLite file's path, or the PostgreSQL URL."""
        return self.database.url or self.data_dir / "controller.db"

    def tls_file(self, configured: str, default_name: str) -> Path:
        return Path(configured) if configured else self.data_dir / "tls" / default_name

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.http.host in ("0.0.0.0", "::", "") else self.http.host
        return f"http://{host}:{self.http.port}"

    @property
    def ota_repository_path(self) -> Path:
        return Path(self.ota.repository) if self.ota.repository else \
            self.data_dir / "ota" / "repository"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"


def config_path(given: Path | None) -> Path:
    return given or Path(os.environ.get("TIEPDAN_CONTROLLER_CONFIG", DEFAULT_PATH))


def load_config(path: Path) -> ControllerConfig:
    return read_toml(path, ControllerConfig)
