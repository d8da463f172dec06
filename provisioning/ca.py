"""The provisioning CA: an offline root, and the online issuing CA it signs.

The root (`create_root`) signs nothing but issuing CAs; its key is encrypted with a passphrase
and kept on offline media, brought out only to start or rotate the issuing CA
(`issue_authority`). The issuing CA's key lives on the controller and vouches for the broker,
the controller and every box. Trust files (`pem`) carry the issuing CA with its chain up to the
root, so a box or broker that trusts the bundle keeps trusting an issuing CA the root signs
later.

Keys are ECDSA P-256: every OpenSSL that Mosquitto, Python and a Pi ship with speaks it, and
handshakes are cheap on a Pi. A box's certificate carries only `CN=<device id>`, which the
broker takes as the MQTT username and client id (`use_identity_as_username`,
`use_username_as_clientid`), so the certificate *is* the box's identity on the broker. The CA
never sees a box's private key: it signs a CSR the box made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tiepdan.errors import BadInput
from tiepdan.firmware.evidence.identity import write_private

# Certificates start a little in the past: a broker or box whose clock lags by minutes must not
# refuse a certificate that was issued a moment ago.
BACKDATE = dt.timedelta(hours=1)
CA_DAYS = 20 * 365  # the root; also a one-tier CA (tests, other parties' CAs)
ISSUING_DAYS = 5 * 365  # rotated by the root long before: certificates it issues must end first


class CsrRefused(BadInput):
    """A CSR the CA will not sign; `code` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


def common_name(name: x509.Name) -> str | None:
    """The single CN of a name that has nothing else, or None."""
    attributes = list(name)
    if len(attributes) != 1 or attributes[0].oid != NameOID.COMMON_NAME:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or the other way round
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def write_key(path: Path, key: ec.EllipticCurvePrivateKey,
              passphrase: bytes | None = None) -> None:
    """Mode 0600; encrypted (PKCS#8, the best scheme the library has) with a passphrase."""
    if passphrase is None:
        write_private(path, key_pem(key))
        return
    if len(passphrase) < 12:
        raise ValueError("the passphrase must have at least 12 characters")
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase)))


def write_public(path: Path, data: bytes) -> None:
    """Certificates and CRLs: world-readable, replaced atomically (the broker may read it now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: dt.datetime


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False)


class CertificateAuthority:
    """A CA key and certificate; `chain` holds the certificates above it (the root)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
                 chain: Sequence[x509.Certificate] = ()) -> None:
        self.key = key
        self.cert = cert
        self.chain = list(chain)

    @classmethod
    def create(cls, name: str, *, days: float = CA_DAYS,
               path_length: int = 0) -> CertificateAuthority:
        """A self-signed CA: `path_length=1` for a root that signs issuing CAs."""
        key = new_key()
        start = now() - BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                           critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def create_root(cls, name: str, days: float = CA_DAYS) -> CertificateAuthority:
        return cls.create(name, days=days, path_length=1)

    @property
    def is_root(self) -> bool:
        constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        return not self.chain and (constraints.path_length or 0) >= 1

    def issue_authority(self, name: str, days: float = ISSUING_DAYS) -> CertificateAuthority:
        """A new issuing CA (its own fresh key) under this root; it may sign only leaves."""
        if not self.is_root:
            raise ValueError("only the root CA signs issuing CAs")
        key = new_key()
        issued = now()
        end = min(issued + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued - BACKDATE).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return CertificateAuthority(key, cert, [self.cert, *self.chain])

    @classmethod
    def load(cls, key_file: Path, cert_file: Path,
             passphrase: bytes | None = None) -> CertificateAuthority:
        """`cert_file` holds the CA's certificate first, then its chain (as `save` writes)."""
        certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
        return cls(load_key(key_file, passphrase), certs[0], certs[1:])

    def save(self, key_file: Path, cert_file: Path, passphrase: bytes | None = None) -> None:
        write_key(key_file, self.key, passphrase)
        write_public(cert_file, self.pem)

    @property
    def pem(self) -> bytes:
        """The trust bundle: this CA's certificate and the chain above it, up to the root."""
        return b"".join(cert_pem(c) for c in [self.cert, *self.chain])

    def _leaf(self, public_key: ec.EllipticCurvePublicKey, cn: str, days: float,
              usage: x509.ObjectIdentifier) -> x509.CertificateBuilder:
        issued = now()
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued - BACKDATE)
            .not_valid_after(issued + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )

    def issue_server(self, public_key: ec.EllipticCurvePublicKey, cn: str,
                     hosts: Sequence[str], days: float) -> x509.Certificate:
        """A TLS server certificate valid for each of `hosts` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return (self._leaf(public_key, cn, days, ExtendedKeyUsageOID.SERVER_AUTH)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(self.key, hashes.SHA256()))

    def issue_client(self, public_key: ec.EllipticCurvePublicKey, cn: str,
                     days: float) -> x509.Certificate:
        return (self._leaf(public_key, cn, days, ExtendedKeyUsageOID.CLIENT_AUTH)
                .sign(self.key, hashes.SHA256()))

    def crl(self, revoked: Iterable[Revoked], days: float) -> x509.CertificateRevocationList:
        issued = now()
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.cert.subject)
                   .last_update(issued - BACKDATE)
                   .next_update(issued + dt.timedelta(days=days)))
        for entry in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(entry.serial)
                .revocation_date(entry.revoked_at).build())
        return builder.sign(self.key, hashes.SHA256())

    def issued(self, cert: x509.Certificate) -> bool:
        """Did this CA sign `cert`?"""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def check_device_csr(pem: str, device: str) -> x509.CertificateSigningRequest:
    """Accept only a well-formed, self-signed P-256 CSR whose subject is exactly CN=<device>."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise CsrRefused("malformed_csr", f"not a PEM certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # cryptography raises various types for exotic algorithms
        raise CsrRefused("malformed_csr", f"unverifiable CSR signature: {exc}") from None
    if not valid:
        raise CsrRefused("malformed_csr", "the CSR signature does not match its key")
    try:
        key = csr.public_key()
    except Exception as exc:
        raise CsrRefused("malformed_csr", f"unreadable CSR key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CsrRefused("bad_key", "the TLS key must be ECDSA P-256")
    cn = common_name(csr.subject)
    if cn != device:
        raise CsrRefused(
            "forged_subject",
            f"CSR subject {csr.subject.rfc4514_string()[:120]!r} is not exactly CN={device}")
    return csr
