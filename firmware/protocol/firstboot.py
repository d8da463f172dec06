"""The first-boot folder: what a technician's SD card carries to a new box.

`tiepdan-provision new-box` writes it on the boot partition (`/boot/firmware/tiepdan/`), the box's
one-shot enrollment reads it; both sides import this module, so the folder has one definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from cryptography import x509

from tiepdan.errors import Forbidden
from tiepdan.firmware.core.config import ConfigError, DeviceSection, Port, read_toml

FOLDER = "tiepdan"
PROVISION_FILE = "provision.toml"
CA_FILE = "ca.pem"
TOKEN_FILE = "claim.token"


class BrokerSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Port = 8883


class OtaPin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The SHA-256 of the TUF root metadata the controller had at provisioning; enrollment's
    root must match it (empty: the controller had no OTA repository yet)."""

    root_sha256: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?\Z")] = ""


class Provision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`provision.toml` on the boot partition, written by `tiepdan-provision new-box`."""

    enroll_url: Annotated[str, msgspec.Meta(pattern=r"^https://[^\s]+\Z")]
    device: DeviceSection
    broker: BrokerSection
    # Where the agent renews its certificate over mutual TLS (issue 15); empty on older cards.
    renew_url: Annotated[str, msgspec.Meta(pattern=r"^(https://[^\s]+)?\Z")] = ""
    ota: OtaPin = OtaPin()


class EnrollError(Forbidden, RuntimeError):
    """Enrollment cannot succeed by trying again: a refusal, or a broken provisioning folder."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_provision(folder: Path) -> tuple[Provision, bytes, str]:
    """The provisioning folder: settings, CA certificate and claim token, each checked."""
    try:
        provision = read_toml(folder / PROVISION_FILE, Provision)
    except ConfigError as exc:
        raise EnrollError("bad_provisioning", str(exc)) from None
    try:
        ca_pem = (folder / CA_FILE).read_bytes()
        x509.load_pem_x509_certificate(ca_pem)
    except (OSError, ValueError) as exc:
        raise EnrollError("bad_provisioning",
                          f"{folder / CA_FILE}: not a CA certificate: {exc}") from None
    try:
        token = (folder / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        raise EnrollError("no_token", f"{folder / TOKEN_FILE}: {exc.strerror}") from None
    if not token:
        raise EnrollError("no_token", f"{folder / TOKEN_FILE} is empty")
    return provision, ca_pem, token
