"""The central side's TLS material: where it lives, and the one step that creates all of it.

`<data_dir>/provisioning/` holds the CA key (0600) and certificate and the enrollment endpoint's
certificate; the broker's directory holds what Mosquitto reads (CA, its certificate and key,
CRL, ACL, the listener configuration); the controller's own client certificate goes where its
`[mqtt]` settings look for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.identity import write_private
from tiepdan.provisioning import dynsec, mosquitto
from tiepdan.provisioning.ca import (
    CertificateAuthority,
    Revoked,
    cert_pem,
    new_key,
    write_key,
    write_public,
)
from tiepdan.provisioning.mosquitto import BrokerFiles

CONTROLLER_PREFIX = "controller-"


@dataclass(frozen=True)
class Material:
    dir: Path
    broker: BrokerFiles
    controller_ca: Path
    controller_cert: Path
    controller_key: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def enroll_cert(self) -> Path:
        return self.dir / "enroll.pem"

    @property
    def enroll_key(self) -> Path:
        return self.dir / "enroll.key"

    def exists(self) -> bool:
        return self.ca_key.exists() and self.ca_cert.exists()

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca_key, self.ca_cert)


def controller_client_id(controller: str) -> str:
    return f"{CONTROLLER_PREFIX}{controller}"


def check_box_id(device: str) -> str:
    """A device id a box may have: a valid id that cannot pass for the controller's."""
    protocol.check_device_id(device)
    if device.startswith(CONTROLLER_PREFIX):
        raise ValueError(f"device id {device!r} is refused: ids starting with "
                         f"{CONTROLLER_PREFIX!r} are the controllers' MQTT identities")
    return device


def initialise(material: Material, *, controller: str, hosts: Sequence[str], broker_port: int,
               listen_host: str | None = None, cert_days: float, crl_days: float,
               debug_log: bool = False) -> CertificateAuthority:
    """Create the CA and everything it vouches for on the central side, and the broker config."""
    protocol.check_device_id(controller)
    ca = CertificateAuthority.create(
        f"tiepdan provisioning CA {controller} {dt.date.today().isoformat()}")
    ca.save(material.ca_key, material.ca_cert)

    broker_key = new_key()
    write_key(material.broker.key, broker_key)
    write_public(material.broker.cert, cert_pem(
        ca.issue_server(broker_key.public_key(), "tiepdan-broker", hosts, cert_days)))
    write_public(material.broker.ca, ca.pem)

    enroll_key = new_key()
    write_key(material.enroll_key, enroll_key)
    write_public(material.enroll_cert, cert_pem(
        ca.issue_server(enroll_key.public_key(), "tiepdan-enrollment", hosts, cert_days)))

    client_key = new_key()
    write_key(material.controller_key, client_key)
    write_public(material.controller_cert, cert_pem(
        ca.issue_client(client_key.public_key(), controller_client_id(controller), cert_days)))
    write_public(material.controller_ca, ca.pem)

    write_broker_state(material, ca, controllers=[controller], revoked=[],
                       revoked_devices=[], crl_days=crl_days)
    write_subscribe_rules(material, controllers=[controller])
    material.broker.conf.write_text(
        mosquitto.listener_text(material.broker, broker_port, listen_host, debug_log=debug_log))
    return ca


def write_broker_state(material: Material, ca: CertificateAuthority, *,
                       controllers: Sequence[str], revoked: Sequence[Revoked],
                       revoked_devices: Sequence[str], crl_days: float) -> bool:
    """Write the CRL and the ACL; True when the ACL changed (the CRL is always re-signed)."""
    write_public(material.broker.crl,
                 ca.crl(revoked, crl_days).public_bytes(serialization.Encoding.PEM))
    acl = mosquitto.acl_text([controller_client_id(c) for c in controllers], revoked_devices)
    old = material.broker.acl.read_text() if material.broker.acl.exists() else None
    if old != acl:
        write_public(material.broker.acl, acl.encode())
    return old != acl


def write_subscribe_rules(material: Material, *, controllers: Sequence[str]) -> bool:
    """The dynamic-security plugin's first file; False when one exists (the plugin owns it
    from its first start, and boxes are added to the running broker, see dynsec.Admin)."""
    if material.broker.dynsec.exists():
        return False
    text = dynsec.config_json([controller_client_id(c) for c in controllers])
    # The plugin rewrites this file itself, so it must own it; nobody else needs to read it.
    write_private(material.broker.dynsec, text.encode())
    return True
