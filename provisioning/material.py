"""The central side's TLS material: where it lives, and the steps that create and rotate it.

`<data_dir>/provisioning/` holds the online issuing CA (key 0600, certificate with its chain),
the root's certificate (`root.pem`; its key is *not* here but on offline media, encrypted),
earlier issuing CAs under `previous/` (kept to sign CRLs until the last certificate they issued
has expired) and the enrollment endpoint's certificate; the broker's directory holds what
Mosquitto reads (the trust bundle, its certificate and key, CRLs, ACL, subscribe rules, the
listener configuration); the controller's own client certificate goes where its `[mqtt]`
settings look for it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.identity import write_private
from tiepdan.provisioning import dynsec, mosquitto
from tiepdan.provisioning.ca import (
    CertificateAuthority,
    Revoked,
    cert_pem,
    new_key,
    serial_hex,
    write_key,
    write_public,
)
from tiepdan.provisioning.mosquitto import BrokerFiles

CONTROLLER_PREFIX = "controller-"
_SHA256 = hashes.SHA256()


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

    @property
    def root_cert(self) -> Path:
        return self.dir / "root.pem"

    @property
    def previous_dir(self) -> Path:
        return self.dir / "previous"

    def exists(self) -> bool:
        return self.ca_key.exists() and self.ca_cert.exists()

    def authority(self) -> CertificateAuthority:
        """The issuing CA: the one that signs certificates and CRLs now."""
        return CertificateAuthority.load(self.ca_key, self.ca_cert)

    def previous(self) -> list[CertificateAuthority]:
        """Issuing CAs rotated out whose certificates may still be in use, newest first."""
        if not self.previous_dir.is_dir():
            return []
        now = dt.datetime.now(dt.UTC)
        found = [ca for key in self.previous_dir.glob("*.key")
                 if (ca := CertificateAuthority.load(key, key.with_suffix(".pem")))
                 .cert.not_valid_after_utc > now]
        return sorted(found, key=lambda ca: ca.cert.not_valid_before_utc, reverse=True)

    def authorities(self) -> list[CertificateAuthority]:
        return [self.authority(), *self.previous()]

    def trust_pem(self) -> bytes:
        """What the broker and the controller trust: every live issuing CA and the root."""
        certs: dict[bytes, x509.Certificate] = {}
        for ca in self.authorities():
            for cert in [ca.cert, *ca.chain]:
                certs.setdefault(cert.fingerprint(_SHA256), cert)
        return b"".join(cert_pem(c) for c in certs.values())


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
               debug_log: bool = False, root_key: Path | None = None,
               passphrase: bytes | None = None) -> CertificateAuthority:
    """Create the CAs and everything they vouch for on the central side, and the broker config.

    With `root_key` (a path on offline media) and `passphrase`, a root CA is made, its key
    written there encrypted, and the online issuing CA signed by it; without, a one-tier CA
    (tests and demos that do not care)."""
    protocol.check_device_id(controller)
    today = dt.date.today().isoformat()
    if root_key is not None:
        if passphrase is None:
            raise ValueError("the root key is written encrypted: a passphrase is needed")
        if root_key.resolve().is_relative_to(material.dir.resolve()):
            raise ValueError(f"the root key belongs on offline media, not in {material.dir}")
        root = CertificateAuthority.create_root(f"tiepdan root CA {controller} {today}")
        write_key(root_key, root.key, passphrase)
        write_public(material.root_cert, cert_pem(root.cert))
        ca = root.issue_authority(_issuing_name(controller))
    else:
        ca = CertificateAuthority.create(f"tiepdan provisioning CA {controller} {today}")
    ca.save(material.ca_key, material.ca_cert)
    issue_central(material, ca, controller=controller, hosts=hosts, cert_days=cert_days)

    write_broker_state(material, ca, controllers=[controller], revoked=[],
                       revoked_devices=[], crl_days=crl_days)
    write_subscribe_rules(material, controllers=[controller])
    material.broker.conf.write_text(
        mosquitto.listener_text(material.broker, broker_port, listen_host, debug_log=debug_log))
    return ca


def issue_central(material: Material, ca: CertificateAuthority, *, controller: str,
                  hosts: Sequence[str], cert_days: float) -> None:
    """The broker's, the enrollment site's and the controller's certificates (fresh keys),
    servers with their chain so that a client trusting only the root can follow it."""
    broker_key = new_key()
    write_key(material.broker.key, broker_key)
    write_public(material.broker.cert, cert_pem(
        ca.issue_server(broker_key.public_key(), "tiepdan-broker", hosts, cert_days))
        + _intermediates(ca))

    enroll_key = new_key()
    write_key(material.enroll_key, enroll_key)
    write_public(material.enroll_cert, cert_pem(
        ca.issue_server(enroll_key.public_key(), "tiepdan-enrollment", hosts, cert_days))
        + _intermediates(ca))

    client_key = new_key()
    write_key(material.controller_key, client_key)
    write_public(material.controller_cert, cert_pem(
        ca.issue_client(client_key.public_key(), controller_client_id(controller), cert_days))
        + _intermediates(ca))
    trust = material.trust_pem()
    write_public(material.broker.ca, trust)
    write_public(material.controller_ca, trust)


def central_due(material: Material, now: dt.datetime, fraction: float = 1 / 3) -> list[Path]:
    """Central certificates with less than `fraction` of their life left (or unreadable)."""
    due = []
    for path in (material.broker.cert, material.enroll_cert, material.controller_cert):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            due.append(path)
            continue
        end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
        if end - now < (end - start) * fraction:
            due.append(path)
    return due


def renew_central(material: Material, ca: CertificateAuthority, *, controller: str,
                  cert_days: float) -> None:
    """New central certificates (fresh keys) for the same names, from the issuing CA now."""
    issue_central(material, ca, controller=controller, hosts=_hosts(material.broker.cert),
                  cert_days=cert_days)


def rotate(material: Material, root: CertificateAuthority, *, controller: str,
           cert_days: float) -> CertificateAuthority:
    """A new issuing CA from the root; the old one moves to `previous/` (it keeps signing CRLs
    for what it issued) and the central certificates are re-issued by the new one, for the
    same names. The controller then rewrites the CRLs and reloads the broker."""
    if not root.is_root or not material.root_cert.exists() or \
            x509.load_pem_x509_certificate(material.root_cert.read_bytes()) != root.cert:
        raise ValueError(f"this is not the root CA of {material.root_cert}")
    old = material.authority()
    material.previous_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = material.previous_dir / serial_hex(old.cert)
    old.save(stem.with_suffix(".key"), stem.with_suffix(".pem"))
    ca = root.issue_authority(_issuing_name(controller))
    ca.save(material.ca_key, material.ca_cert)
    issue_central(material, ca, controller=controller, hosts=_hosts(material.broker.cert),
                  cert_days=cert_days)
    return ca


def _issuing_name(controller: str) -> str:
    """Unique even for two rotations on one day: OpenSSL finds a CA's CRL by its name."""
    return f"tiepdan issuing CA {controller} {dt.date.today().isoformat()} " \
           f"{secrets.token_hex(4)}"


def _intermediates(ca: CertificateAuthority) -> bytes:
    """The chain a server sends: its issuing CA, not the root (clients have that)."""
    return cert_pem(ca.cert) if ca.chain else b""


def _hosts(cert_file: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts: list[str] = [str(n) for n in names.get_values_for_type(x509.DNSName)]
    hosts += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)
              if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)]
    return hosts


def write_broker_state(material: Material, ca: CertificateAuthority, *,
                       controllers: Sequence[str], revoked: Sequence[Revoked],
                       revoked_devices: Sequence[str], crl_days: float) -> bool:
    """Write the CRLs and the ACL; True when the ACL changed (the CRLs are always re-signed).

    One CRL per live issuing CA (OpenSSL wants one from the issuer of every certificate it
    checks), each listing every revoked serial: serials are random, 159 bits."""
    authorities = [ca, *(p for p in material.previous() if p.cert != ca.cert)]
    write_public(material.broker.crl, b"".join(
        a.crl(revoked, crl_days).public_bytes(serialization.Encoding.PEM) for a in authorities))
    acl = mosquitto.acl_text([controller_client_id(c) for c in controllers], revoked_devices)
    old = material.broker.acl.read_text() if material.broker.acl.exists() else None
    if old != acl:
        write_public(material.broker.acl, acl.encode())
    return old != acl


def write_subscribe_rules(material: Material, *, controllers: Sequence[str],
                          boxes: Sequence[str] = ()) -> bool:
    """The dynamic-security plugin's first file; False when one exists (the plugin owns it
    from its first start, and boxes are added to the running broker, see dynsec.Admin).
    `boxes`: a fleet enrolled before the plugin was turned on, written in one go."""
    if material.broker.dynsec.exists():
        return False
    text = dynsec.config_json([controller_client_id(c) for c in controllers], boxes)
    # The plugin rewrites this file itself, so it must own it; nobody else needs to read it.
    write_private(material.broker.dynsec, text.encode())
    return True
