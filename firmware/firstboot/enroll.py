"""`tiepdan-enroll`: the box's first boot, from the SD card's provisioning folder to a certificate.

Run once by `tiepdan-firstboot.service` before the agent. It reads `<boot>/tiepdan/`
(`provision.toml`: device, broker and enrollment URL; `ca.pem`; `claim.token`), creates the
box's TLS key and Ed25519 signing key on the box (neither ever leaves it), sends a CSR, the
token and the signing key's public half, with a signature proving the box holds it, to the
controller over HTTPS (checked against the CA from the SD card), checks the certificate it gets
back, writes it under `<state dir>/tls/`, the controller's public key under
`<state dir>/identity/`, and the agent configuration, and deletes the token. Enrollment also
hands over the archive's address, the OTA repository's and its TUF trusted root (checked against
the hash pinned on the SD card), so the box records and updates with nothing edited by hand. A
box that cannot reach the controller keeps trying; a refusal is final and logged. Running it
again after success does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import ssl
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import tomli_w
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tiepdan.errors import Unavailable
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.config import DEFAULT_PATH
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.backoff import Backoff
from tiepdan.firmware.core.durable import fsync_dir, write_atomic
from tiepdan.firmware.evidence.identity import Identity, write_private
from tiepdan.firmware.protocol.firstboot import (
    FOLDER,
    PROVISION_FILE,
    TOKEN_FILE,
    EnrollError,
    Provision,
    read_provision,
)

log = logging.getLogger(__name__)

DEFAULT_BOOT = Path("/boot/firmware")
DEFAULT_STATE = Path("/var/lib/tiepdan")


class Transient(Unavailable, RuntimeError):
    """Worth another try: network down, controller busy or restarting, rate limited."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Paths:
    boot: Path
    state: Path
    agent_config: Path

    @property
    def folder(self) -> Path:
        return self.boot / FOLDER

    @property
    def token(self) -> Path:
        return self.folder / TOKEN_FILE

    @property
    def tls(self) -> Path:
        return self.state / "tls"

    @property
    def key(self) -> Path:
        return self.tls / "device.key"

    @property
    def cert(self) -> Path:
        return self.tls / "device.pem"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def controller_pub(self) -> Path:
        return self.state / "identity" / "controller.pub"

    @property
    def ota_root(self) -> Path:
        """The TUF trusted root, beside the agent's configuration (the agent's ota default)."""
        return self.agent_config.parent / "ota-root.json"


@dataclass(frozen=True)
class Enrolled:
    device: str
    serial: str
    already: bool = False


def tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The box's TLS key: created here once, kept across retries so a lost answer can be
    asked for again with the same CSR."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollError("bad_key", f"{path} is not an EC key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    log.info("enroll_tls_key_created path=%s", path)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def signed_request(identity: Identity, *, device: str, commune: str, token: str,
                   csr: str) -> protocol.EnrollRequest:
    """The request, with the signing key's proof of possession over this token and CSR: the
    controller binds no public key the box cannot sign with."""
    sign_key = base64.b64encode(identity.signing_public_raw()).decode()
    proof = identity.signing_key().sign(protocol.enroll_challenge(device, token, csr, sign_key))
    return protocol.EnrollRequest(device=device, commune=commune, token=token, csr=csr,
                                  sign_key=sign_key, sign_proof=base64.b64encode(proof).decode())


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def post(session: aiohttp.ClientSession, url: str, request: protocol.EnrollRequest,
               context: ssl.SSLContext) -> protocol.EnrollResponse:
    """One attempt; EnrollError when the controller refuses, Transient when worth retrying."""
    try:
        async with session.post(url, data=protocol.encode(request), ssl=context,
                                headers={"Content-Type": "application/json"}) as reply:
            body = await reply.read()
            if reply.status == 200:
                try:
                    return protocol.decode(body, protocol.EnrollResponse)
                except protocol.ProtocolError as exc:
                    raise EnrollError("bad_response", str(exc)) from None
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            refusal = parse_refusal(body)
            if reply.status in (408, 429) or reply.status >= 500:
                raise Transient(f"HTTP {reply.status}: {refusal.message}", retry_after)
            raise EnrollError(refusal.code, f"HTTP {reply.status}: {refusal.message}")
    except aiohttp.ClientConnectorCertificateError as exc:
        # The SD card's CA does not vouch for this server, so the token is not sent. Retried:
        # a Pi without an RTC often boots with a clock too old for any certificate until NTP.
        raise Transient(f"untrusted server {url}: {exc.certificate_error}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Transient(f"{type(exc).__name__}: {exc}") from None


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class _Refused(msgspec.Struct):
    error: protocol.EnrollRefusal


def parse_refusal(body: bytes) -> protocol.EnrollRefusal:
    try:
        return msgspec.json.decode(body, type=_Refused).error
    except msgspec.DecodeError:
        return protocol.EnrollRefusal(code="http_error",
                                      message=body[:200].decode(errors="replace"))


def check_certificate(response: protocol.EnrollResponse | protocol.RenewResponse, *,
                      device: str, ca_pem: bytes,
                      key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The certificate must be ours: our key, our device id, signed by a CA of the SD card's
    bundle, or by an issuing CA in the answer that the bundle's root signed (a rotation)."""
    try:
        cert = x509.load_pem_x509_certificate(response.certificate.encode())
        anchors = x509.load_pem_x509_certificates(ca_pem)
        offered = x509.load_pem_x509_certificates(response.ca.encode())
    except ValueError as exc:
        raise EnrollError("bad_response", f"unreadable certificate: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise EnrollError("bad_response", "the certificate is not for this box's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [device] or response.device != device:
        raise EnrollError("bad_response", f"the certificate is not for {device}")
    roots = [a for a in anchors if _path_length(a) >= 1]
    issuers = anchors + [c for c in offered if c not in anchors and _path_length(c) >= 0
                         and any(_signed_by(c, r) for r in roots)]
    if not any(_signed_by(cert, issuer) for issuer in issuers):
        raise EnrollError("bad_response", "the certificate is not signed by the provisioning "
                                          "CA on the SD card") from None
    return cert


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _path_length(cert: x509.Certificate) -> int:
    """-1 for a leaf; a CA's path length (a root that signs issuing CAs has 1)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return -1
    if not constraints.ca:
        return -1
    return 99 if constraints.path_length is None else constraints.path_length


def check_ota_root(response: protocol.EnrollResponse, provision: Provision) -> bytes | None:
    """The TUF root handed over at enrollment, if any, checked against the SD card's pin."""
    pin = provision.ota.root_sha256
    if not response.ota_trusted_root:
        if pin:
            raise EnrollError("bad_response", "the SD card pins an OTA trusted root but the "
                                              "controller sent none")
        return None
    root = response.ota_trusted_root.encode()
    if pin and hashlib.sha256(root).hexdigest() != pin:
        raise EnrollError("bad_response", "the OTA trusted root does not match the hash pinned "
                                          "on the SD card at provisioning")
    try:
        signed = json.loads(root)["signed"]
        if signed["_type"] != "root":
            raise ValueError(f"_type is {signed['_type']!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollError("bad_response", f"the OTA trusted root is not TUF root metadata: "
                                          f"{exc}") from None
    return root


def write_agent_config(path: Path, provision: Provision, state: Path,
                       response: protocol.EnrollResponse | None = None,
                       ota_root: Path | None = None) -> None:
    """Merge provisioning and what enrollment handed over into the agent's config, keeping any
    other settings already there."""
    settings: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            settings = tomllib.loads(path.read_text())
    settings["device"] = msgspec.to_builtins(provision.device)
    mqtt = settings.setdefault("mqtt", {})
    mqtt.update(host=provision.broker.host, port=provision.broker.port, tls=True)
    for name in ("ca_file", "cert_file", "key_file"):
        mqtt.pop(name, None)  # the defaults under <state>/tls/ are where enrollment writes
    settings.setdefault("state", {})["dir"] = str(state)
    if provision.renew_url:
        settings.setdefault("renewal", {})["url"] = provision.renew_url
    if response is not None and response.archive_url:
        settings.setdefault("recording", {})["archive_url"] = response.archive_url
    if response is not None and response.ota_repository:
        settings.setdefault("ota", {})["repository"] = response.ota_repository
    if ota_root is not None:
        settings.setdefault("ota", {})["trusted_root"] = str(ota_root)
    header = (f"# written by tiepdan-enroll from the boot partition's {FOLDER}/{PROVISION_FILE};"
              "\n# settings are documented in the README (Configuration).\n")
    write_atomic(path, (header + tomli_w.dumps(settings)).encode(), 0o644)




async def enroll(paths: Paths, *, retry_min: float = 2.0, retry_max: float = 60.0,
                 deadline: float | None = None) -> Enrolled:
    """Enroll until it succeeds or is refused; `deadline` (loop time) bounds the retrying."""
    if not paths.token.exists() and paths.cert.exists():
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        device = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        log.info("enroll_skipped reason=already_enrolled device=%s cert=%s", device, paths.cert)
        return Enrolled(device, f"{cert.serial_number:x}", already=True)
    provision, ca_pem, token = read_provision(paths.folder)
    device = provision.device.id
    key = tls_key(paths.key)
    identity = Identity(paths.state)
    request = signed_request(identity, device=device, commune=provision.device.commune,
                             token=token, csr=make_csr(key, device))
    context = client_context(ca_pem)
    loop = asyncio.get_running_loop()
    backoff = Backoff(retry_min, retry_max)
    log.info("enroll_start device=%s commune=%s url=%s", device, provision.device.commune,
             provision.enroll_url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            try:
                response = await post(session, provision.enroll_url, request, context)
                break
            except Transient as exc:
                pause = backoff.next() if exc.retry_after is None else exc.retry_after
                if deadline is not None and loop.time() + pause > deadline:
                    raise EnrollError("unreachable", f"gave up: {exc}") from None
                log.warning("enroll_retry device=%s seconds=%.1f error=%s", device, pause, exc)
                await asyncio.sleep(pause)
    cert = check_certificate(response, device=device, ca_pem=ca_pem, key=key)
    ota_root = check_ota_root(response, provision)
    controller_key = base64.b64decode(response.controller_sign_key)
    write_atomic(paths.ca, ca_pem, 0o644)
    write_atomic(paths.cert, response.certificate.encode(), 0o644)
    write_atomic(paths.controller_pub, base64.b64encode(controller_key) + b"\n", 0o644)
    if ota_root is not None:
        write_atomic(paths.ota_root, ota_root, 0o644)
    write_agent_config(paths.agent_config, provision, paths.state, response,
                       paths.ota_root if ota_root is not None else None)
    paths.token.unlink()
    fsync_dir(paths.folder)
    serial = f"{cert.serial_number:x}"
    log.info("enroll_done device=%s serial=%s not_after=%s config=%s archive=%s ota=%s "
             "ota_root=%s", device, serial, cert.not_valid_after_utc.date().isoformat(),
             paths.agent_config, response.archive_url or "-", response.ota_repository or "-",
             "pinned" if provision.ota.root_sha256 else ("unpinned" if ota_root else "-"))
    return Enrolled(device, serial)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiepdan-enroll", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boot", type=Path, default=DEFAULT_BOOT,
                        help=f"the boot partition, holding {FOLDER}/ (default %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                        help="the agent's state directory (default %(default)s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_PATH,
                        help="the agent configuration to write (default %(default)s)")
    parser.add_argument("--give-up-after", type=float, default=0, metavar="SECONDS",
                        help="stop retrying an unreachable controller after this long "
                             "(default: never)")
    args = parser.parse_args(argv)
    logs.setup()
    paths = Paths(boot=args.boot, state=args.state_dir, agent_config=args.config)

    async def run() -> Enrolled:
        deadline = None
        if args.give_up_after:
            deadline = asyncio.get_running_loop().time() + args.give_up_after
        return await enroll(paths, deadline=deadline)

    try:
        asyncio.run(run())
    except EnrollError as exc:
        log.error("enroll_refused code=%s error=%s", exc.code, exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
