"""`tiepdan-enroll`: the box's first boot, from the SD card's provisioning folder to a certificate.

Run once by `tiepdan-firstboot.service` before the agent. It reads `<boot>/tiepdan/`
(`provision.toml`: device, broker and enrollment URL; `ca.pem`; `claim.token`), creates the
box's TLS key and Ed25519 signing key on the box (neither ever leaves it), sends a CSR, the
token and the signing key's public half to the controller over HTTPS (checked against the CA from
the SD card), checks the certificate it gets back, writes it under `<state dir>/tls/`, the
controller's public key under `<state dir>/identity/`, and the agent configuration, and deletes
the token. A box that cannot reach the controller keeps trying; a refusal is final and logged.
Running it again after success does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import random
import ssl
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import msgspec
import tomli_w
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tiepdan.firmware import protocol
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import DEFAULT_PATH, ConfigError, DeviceSection, Port, read_toml
from tiepdan.firmware.core.durable import fsync_dir, write_atomic
from tiepdan.firmware.evidence.identity import Identity, write_private

log = logging.getLogger(__name__)

DEFAULT_BOOT = Path("/boot/firmware")
DEFAULT_STATE = Path("/var/lib/tiepdan")
FOLDER = "tiepdan"
PROVISION_FILE = "provision.toml"
CA_FILE = "ca.pem"
TOKEN_FILE = "claim.token"


class BrokerSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Port = 8883


class Provision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`provision.toml` on the boot partition, written by `tiepdan-provision new-box`."""

    enroll_url: Annotated[str, msgspec.Meta(pattern=r"^https://[^\s]+\Z")]
    device: DeviceSection
    broker: BrokerSection
    # the controller's box listener (archive uploads, OTA); empty in folders from before it
    archive_url: Annotated[str, msgspec.Meta(pattern=r"^(https://[^\s]+)?\Z")] = ""


class EnrollError(RuntimeError):
    """Enrollment cannot succeed by trying again: a refusal, or a broken provisioning folder."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Transient(RuntimeError):
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


@dataclass(frozen=True)
class Enrolled:
    device: str
    serial: str
    already: bool = False


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
            retry_after = _retry_after(reply.headers.get("Retry-After"))
            refusal = _refusal(body)
            if reply.status in (408, 429) or reply.status >= 500:
                raise Transient(f"HTTP {reply.status}: {refusal.message}", retry_after)
            raise EnrollError(refusal.code, f"HTTP {reply.status}: {refusal.message}")
    except aiohttp.ClientConnectorCertificateError as exc:
        # The SD card's CA does not vouch for this server, so the token is not sent. Retried:
        # a Pi without an RTC often boots with a clock too old for any certificate until NTP.
        raise Transient(f"untrusted server {url}: {exc.certificate_error}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Transient(f"{type(exc).__name__}: {exc}") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class _Refused(msgspec.Struct):
    error: protocol.EnrollRefusal


def _refusal(body: bytes) -> protocol.EnrollRefusal:
    try:
        return msgspec.json.decode(body, type=_Refused).error
    except msgspec.DecodeError:
        return protocol.EnrollRefusal(code="http_error",
                                      message=body[:200].decode(errors="replace"))


def check_certificate(response: protocol.EnrollResponse, *, device: str, ca_pem: bytes,
                      key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The certificate must be ours: our key, our device id, signed by the SD card's CA."""
    try:
        cert = x509.load_pem_x509_certificate(response.certificate.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise EnrollError("bad_response", f"unreadable certificate: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise EnrollError("bad_response", "the certificate is not for this box's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [device] or response.device != device:
        raise EnrollError("bad_response", f"the certificate is not for {device}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrollError("bad_response", "the certificate is not signed by the provisioning "
                                          "CA on the SD card") from None
    if x509.load_pem_x509_certificate(response.ca.encode()) != ca:
        raise EnrollError("bad_response", "the controller names another CA than the SD card")
    return cert


def write_agent_config(path: Path, provision: Provision, state: Path) -> None:
    """Merge provisioning into the agent's config, keeping any other settings already there."""
    settings: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            settings = tomllib.loads(path.read_text())
    settings["device"] = msgspec.to_builtins(provision.device)
    mqtt = settings.setdefault("mqtt", {})
    mqtt.update(host=provision.broker.host, port=provision.broker.port, tls=True)
    for name in ("ca_file", "cert_file", "key_file"):
        mqtt.pop(name, None)  # the defaults under <state>/tls/ are where enrollment writes
    if provision.archive_url:
        settings.setdefault("recording", {})["archive_url"] = provision.archive_url
    settings.setdefault("state", {})["dir"] = str(state)
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
    request = protocol.EnrollRequest(
        device=device, commune=provision.device.commune, token=token,
        csr=make_csr(key, device),
        sign_key=base64.b64encode(identity.signing_public_raw()).decode())
    context = client_context(ca_pem)
    loop = asyncio.get_running_loop()
    delay = retry_min
    log.info("enroll_start device=%s commune=%s url=%s", device, provision.device.commune,
             provision.enroll_url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            try:
                response = await post(session, provision.enroll_url, request, context)
                break
            except Transient as exc:
                pause = exc.retry_after if exc.retry_after is not None else \
                    delay / 2 + random.uniform(0, delay / 2)
                if deadline is not None and loop.time() + pause > deadline:
                    raise EnrollError("unreachable", f"gave up: {exc}") from None
                log.warning("enroll_retry device=%s seconds=%.1f error=%s", device, pause, exc)
                await asyncio.sleep(pause)
                delay = min(delay * 2, retry_max)
    cert = check_certificate(response, device=device, ca_pem=ca_pem, key=key)
    controller_key = base64.b64decode(response.controller_sign_key)
    write_atomic(paths.ca, ca_pem, 0o644)
    write_atomic(paths.cert, response.certificate.encode(), 0o644)
    write_atomic(paths.controller_pub, base64.b64encode(controller_key) + b"\n", 0o644)
    write_agent_config(paths.agent_config, provision, paths.state)
    paths.token.unlink()
    fsync_dir(paths.folder)
    serial = f"{cert.serial_number:x}"
    log.info("enroll_done device=%s serial=%s not_after=%s config=%s", device, serial,
             cert.not_valid_after_utc.date().isoformat(), paths.agent_config)
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
