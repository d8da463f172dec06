"""Configuration both sides share: the TOML reader with clear errors, and the device, MQTT and
log sections (the box's own sections are in `tiepdan.firmware.agent.config`).

README.md documents each setting; tests/firmware/test_config.py keeps the two in step.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from tiepdan.errors import BadInput
from tiepdan.firmware.core.mqtt import LinkSettings, TlsSettings
from tiepdan.firmware.protocol import ID_PATTERN

T = TypeVar("T")


class ConfigError(BadInput):
    """A configuration file that cannot be used; the message names the file and the key."""


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class DeviceSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    kind: Literal["central", "province", "commune"] = "commune"
    province: Annotated[str, msgspec.Meta(max_length=16)] = ""
    commune: Annotated[str, msgspec.Meta(max_length=16)] = ""


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


class LogSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?\Z", re.S)
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
