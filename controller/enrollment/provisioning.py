"""The controller's side of provisioning: claim tokens, enrollment, revocation, broker files.

It holds the provisioning CA (created beforehand by `tiepdan-provision ca init`), answers the
technician's tool through the admin API, serves the enrollment endpoint, and keeps the broker's
CRL and ACL in step with the database: rewritten at start (the ACL follows the installed
protocol.py) and on every revocation, re-signed long before the CRL could expire.

Revoking a box (lost or stolen) takes effect on the broker without restarting it or anyone:
1. its certificate goes into the CRL and its device id gets a deny-all ACL entry; the broker
   reloads both on SIGHUP (`provisioning.broker_reload`);
2. the controller waits until the broker refuses a throw-away certificate listed in the same
   CRL, which proves the reload took effect;
3. it then connects once *as the box*, with a short-lived certificate for the box's id that it
   issues itself, and a clean start: the broker closes the box's live connection (MQTT session
   takeover) and drops its session. That certificate is revoked right after.
The box's signing key stops being trusted from the revocation time (`identities.revoke`), and
each of its recordings is frozen where the archive's copy ends (`Archive.freeze`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tiepdan import errors
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.broker_probe import (
    connect_once,
    credentials,
    handshake_refused,
)
from tiepdan.controller.enrollment.enrollment import Enrollment, Refused, check_sign_key
from tiepdan.controller.enrollment.handover import handover
from tiepdan.controller.enrollment.renewal import RenewalSite
from tiepdan.controller.fleet.registry import Device
from tiepdan.firmware import protocol
from tiepdan.firmware.core.config import DeviceSection
from tiepdan.firmware.core.mqtt import LinkError
from tiepdan.firmware.protocol.firstboot import BrokerSection, OtaPin, Provision
from tiepdan.provisioning import dynsec
from tiepdan.provisioning.ca import (
    BACKDATE,
    CertificateAuthority,
    CsrRefused,
    Revoked,
    cert_pem,
    check_device_csr,
    common_name,
    fingerprint,
    new_key,
    public_key_fingerprint,
    serial_hex,
)
from tiepdan.provisioning.claims import Box, ClaimRefused, ClaimStore
from tiepdan.provisioning.material import (
    Material,
    central_due,
    check_box_id,
    controller_client_id,
    renew_central,
    write_broker_state,
    write_subscribe_rules,
)
from tiepdan.provisioning.mosquitto import BrokerFiles

if TYPE_CHECKING:
    from tiepdan.controller.fleet.registry import Registry
    from tiepdan.controller.identities import Identities
    from tiepdan.controller.signing import SigningKey
    from tiepdan.controller.store import Database
    from tiepdan.firmware.core.mqtt import MqttLink

log = logging.getLogger(__name__)

CRL_CHECK_S = 600.0
CA_WAIT_S = 30.0
# Throw-away certificates (the reload probe, the session takeover) live this long at most.
EPHEMERAL_DAYS = 10 / (24 * 60)
KIND_PREFIX = {"commune": "xa", "province": "tinh", "central": "tw"}

# Empty only for the central and provincial offices' boxes, which serve no commune.
Commune = Annotated[str, msgspec.Meta(pattern=r"^([a-z0-9][a-z0-9-]{0,15})?\Z")]


class NewBox(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the technician's tool asks for: a claim token (and a device id) for one hall."""

    commune: Commune
    hall: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    device: protocol.DeviceId | None = None
    province: Annotated[str, msgspec.Meta(max_length=16)] = ""
    kind: Literal["central", "province", "commune"] = "commune"
    days: Annotated[float, msgspec.Meta(gt=0, le=365)] | None = None


class RevokeBox(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "revoked by an admin"


@dataclass(frozen=True)
class Revocation:
    device: str
    reason: str
    revoked_at: float
    serials: list[str]
    broker_refuses: bool
    evicted: bool


def material_for(config: ControllerConfig) -> Material:
    m, p = config.mqtt, config.provisioning
    return Material(
        dir=config.data_dir / "provisioning",
        broker=BrokerFiles(Path(p.broker_dir) if p.broker_dir else config.data_dir / "broker"),
        controller_ca=config.tls_file(m.ca_file, "ca.pem"),
        controller_cert=config.tls_file(m.cert_file, "controller.pem"),
        controller_key=config.tls_file(m.key_file, "controller.key"),
    )


def broker_address(config: ControllerConfig) -> tuple[str, int]:
    """Where boxes reach the broker (not necessarily where the controller does)."""
    p = config.provisioning
    return p.broker_host or config.mqtt.host, p.broker_port or config.mqtt.port


class Provisioning:
    """Boxes from claim to revocation: the CA, claims, enrollment, broker files and CRL.
    `check_birth` is connected to the registry by the composition root."""

    def __init__(self, config: ControllerConfig, db: Database, registry: Registry,
                 identities: Identities, signing: SigningKey, link: MqttLink,
                 box_url: Callable[[], str], freeze: Callable[[str, str], object]) -> None:
        self.config = config
        self.settings = config.provisioning
        self.material = material_for(config)
        self.db = db
        self.registry = registry
        self.identities = identities
        self.signing = signing
        self.link = link
        self.box_url = box_url  # the box listener's, known once it listens
        self._freeze = freeze  # the archive's: a revoked box's recordings end where they are
        self.controller_id = config.controller.id
        self.claims = ClaimStore(db.conn)
        self.enrollment = Enrollment(self)
        self.renewal = RenewalSite(self)
        self._ca: CertificateAuthority | None = None
        self._ca_changed = 0
        self._admit_lock = asyncio.Lock()
        self._admit_pending: set[str] = set()
        self._admitted: set[str] = set()  # registered with the broker by this process
        self._lock = asyncio.Lock()
        self._sites_started = False

    def check_birth(self, device: Device, what: str) -> None:
        """A box may only speak in its own subtree, but it chooses what it calls itself: flag a
        birth that disagrees with what the box was provisioned as (moved without re-provisioning,
        a wrong config, or a tampered one)."""
        if what != "birth":
            return
        box = self.claims.get(device.id)
        if box is None:
            return
        claimed = {"commune": device.commune, "name": device.name, "kind": device.kind}
        issued = {"commune": box.commune, "name": box.hall, "kind": box.kind}
        if box.province:
            claimed["province"], issued["province"] = device.province, box.province
        wrong = sorted(k for k in issued if claimed[k] != issued[k])
        if wrong:
            log.warning("device_identity_mismatch device=%s fields=%s birth=%s provisioned=%s",
                        device.id, ",".join(wrong), {k: claimed[k] for k in wrong},
                        {k: issued[k] for k in wrong})
        if wrong or device.extra.get("identity_mismatch"):
            self.registry.set_extra(device.id, "identity_mismatch", wrong)

    def authority(self) -> CertificateAuthority:
        """The provisioning CA; Unavailable until `tiepdan-provision ca init` has run."""
        if not self.material.exists():
            raise Unavailable("no provisioning CA: run `tiepdan-provision ca init` first")
        # `ca rotate` (another process) replaces the issuing CA: pick the new one up.
        changed = self.material.ca_cert.stat().st_mtime_ns
        if self._ca is None or changed != self._ca_changed:
            self._ca, self._ca_changed = self.material.authority(), changed
        return self._ca

    @property
    def enroll_url(self) -> str:
        if self.settings.enroll_url:
            return self.settings.enroll_url
        host, _ = broker_address(self.config)
        host = f"[{host}]" if ":" in host else host
        port = self.enrollment.port or self.settings.enroll_port
        return f"https://{host}:{port}{protocol.ENROLL_PATH}"

    @property
    def renew_url(self) -> str:
        if self.settings.renew_url:
            return self.settings.renew_url
        host, _ = broker_address(self.config)
        host = f"[{host}]" if ":" in host else host
        port = self.renewal.port or self.settings.renew_port
        return f"https://{host}:{port}{protocol.RENEW_PATH}"

    async def start(self) -> None:
        """The broker's files, then the enrollment and renewal sites, once the CA exists.

        Awaited by the controller's own start, so a controller closed right after it started
        never leaves a site half-bound behind it (a cancelled bind can leak the socket).
        A second call does nothing.
        """
        if self._sites_started or not self.material.exists():
            return
        self._sites_started = True
        await self._sync_logged("start")
        try:
            await self.enrollment.start()
        except OSError as exc:
            # Revocation and the CRL still matter without it; say so and carry on.
            log.error("enrollment_unavailable port=%s error=%s", self.settings.enroll_port, exc)
        try:
            await self.renewal.start()
        except OSError as exc:
            log.error("renewal_unavailable port=%s error=%s", self.settings.renew_port, exc)

    async def stop(self) -> None:
        """Close the sites; idempotent."""
        await self.enrollment.stop()
        await self.renewal.stop()

    async def run(self) -> None:
        """Serve enrollment and keep the broker's CRL fresh until cancelled."""
        if not self.material.exists():
            log.warning("provisioning_disabled reason=no_ca hint=%s",
                        "run `tiepdan-provision ca init` to enable enrollment")
            while True:  # `ca init` may still come; the controller runs on meanwhile
                await asyncio.sleep(CA_WAIT_S)
                if self.material.exists():
                    break
        try:
            await self.start()
            while True:
                await asyncio.sleep(CRL_CHECK_S)
                if self.crl_due():
                    await self._sync_logged("crl_refresh")
                if central_due(self.material, dt.datetime.now(dt.UTC)):
                    await self.renew_central("expiring")
        finally:
            await self.stop()

    async def _sync_logged(self, why: str) -> None:
        try:
            await self.sync_broker(why)
        except (OSError, ValueError) as exc:
            log.error("broker_files_failed why=%s error=%s", why, exc)
        if why == "start":
            enrolled = [b.device for b in self.claims.all() if b.cert_pem and not b.revoked_at]
            # A fleet from before issue 15: its broker has no subscribe rules yet. Writing them
            # in one file is far cheaper than registering boxes one by one (the plugin rewrites
            # its file after every change); Mosquitto needs the new tiepdan.conf and a restart.
            with contextlib.suppress(OSError):
                if write_subscribe_rules(self.material, controllers=[self.controller_id],
                                         boxes=enrolled):
                    log.warning("broker_subscribe_rules_created path=%s boxes=%d hint=%s",
                                self.material.broker.dynsec, len(enrolled),
                                "run `tiepdan-provision broker-config` and restart Mosquitto")
            try:
                await self.admit(enrolled)
            except dynsec.DynsecError as exc:
                log.error("broker_subscribe_rules_failed boxes=%d error=%s", len(enrolled), exc)

    async def admit(self, devices: list[str]) -> bool:
        """Give boxes their SUBSCRIBE rules on the running broker (provisioning/dynsec.py),
        as a throw-away admin identity; DynsecError when the broker would not take them.

        One admin connection at a time (it has one client id: a second would take the first
        over), carrying every box that asked meanwhile: enrollments in a burst share it."""
        target = self._broker_tls()
        if target is None:
            log.warning("broker_subscribe_rules_skipped reason=the controller does not use TLS")
            return False
        wanted = [d for d in devices if d not in self._admitted]
        if not wanted:
            return False
        self._admit_pending.update(wanted)
        async with self._admit_lock:
            batch = sorted(self._admit_pending - self._admitted)
            if batch:
                self._admit_pending.difference_update(batch)
                username = dynsec.admin_username(controller_client_id(self.controller_id))
                key = new_key()
                cert = self.authority().issue_client(key.public_key(), username,
                                                     EPHEMERAL_DAYS)
                with credentials(self.material.dir, key, cert) as (cert_file, key_file):
                    admin = dynsec.Admin(*target, cert_file, key_file, client_id=username)
                    await asyncio.to_thread(admin.add_boxes, batch)
                self._admitted.update(batch)
        missing = [d for d in wanted if d not in self._admitted]
        if missing:
            raise dynsec.DynsecError(f"not registered with the broker: {', '.join(missing)}")
        return True

    # -- claim tokens and enrollment ---------------------------------------------------------------

    def new_box(self, request: NewBox) -> tuple[str, Box]:
        self.authority()  # no claim without a CA that could honour it
        if request.kind == "commune" and not request.commune:
            raise ClaimRefused("bad_commune", "a commune hall's box needs its commune code")
        device = request.device or _device_id(request.kind, request.commune or request.province)
        try:
            check_box_id(device)
        except ValueError as exc:
            raise ClaimRefused("bad_device", str(exc)) from None
        days = request.days or self.settings.token_days
        with self.db.transaction():
            token, box = self.claims.issue(device, commune=request.commune, hall=request.hall,
                                           province=request.province, kind=request.kind,
                                           ttl=days * 86400)
        log.info("claim_issued device=%s commune=%s expires=%s", device, request.commune,
                 _iso(box.token_expires))
        return token, box

    def provision_file(self, box: Box) -> Provision:
        host, port = broker_address(self.config)
        return Provision(
            enroll_url=self.enroll_url,
            device=msgspec.convert({"id": box.device, "name": box.hall, "kind": box.kind,
                                    "province": box.province, "commune": box.commune},
                                   DeviceSection),
            broker=BrokerSection(host=host, port=port), renew_url=self.renew_url,
            ota=OtaPin(root_sha256=handover(self.config, self.box_url()).root_sha256))

    def enroll(self, request: protocol.EnrollRequest, peer: str) -> protocol.EnrollResponse:
        """Grant a certificate, or raise Refused; everything granted commits together."""
        try:
            ca = self.authority()
        except Unavailable as exc:
            raise Refused(503, "unavailable", str(exc)) from None
        sign_key = check_sign_key(request)
        try:
            csr = check_device_csr(request.csr, request.device)
        except CsrRefused as exc:
            raise Refused(403 if exc.code == "forged_subject" else 400, exc.code,
                          str(exc)) from None
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        tls_key = public_key_fingerprint(key)
        with self.db.transaction():
            try:
                box = self.claims.claim(request.token, device=request.device,
                                        commune=request.commune, tls_key=tls_key,
                                        sign_key=sign_key)
            except ClaimRefused as exc:
                raise Refused(403, exc.code, str(exc)) from None
            repeated = box.cert_pem is not None
            others = [d for d in self.identities.holders(sign_key)
                      if d != request.device]
            if others:
                # A cloned key (a stolen box's) would sign recordings for two boxes at once.
                raise Refused(409, "duplicate_sign_key", "this signing key is already bound to "
                              f"another box ({others[0]})")
            if box.cert_pem is not None:
                certificate = box.cert_pem
                serial = box.cert_serial
            else:
                cert = ca.issue_client(key, request.device, self.settings.cert_days)
                certificate, serial = cert_pem(cert).decode(), serial_hex(cert)
                self.claims.enrolled(request.device, tls_key=tls_key, sign_key=sign_key,
                                     cert_pem=certificate, cert_serial=serial,
                                     cert_not_after=cert.not_valid_after_utc.timestamp(),
                                     peer=peer)
                self.claims.record_certificate(request.device, serial,
                                               cert.not_valid_after_utc.timestamp())
                self.identities.bind(request.device, sign_key, cert_serial=serial,
                                                 cert_fingerprint=fingerprint(cert))
        log.info("enroll_%s device=%s commune=%s peer=%s serial=%s",
                 "repeated" if repeated else "done", request.device, request.commune, peer,
                 serial)
        extra = handover(self.config, self.box_url())
        return protocol.EnrollResponse(
            device=request.device, certificate=certificate, ca=ca.pem.decode(),
            controller_sign_key=base64.b64encode(self.signing.public_raw()).decode(),
            archive_url=extra.archive_url, ota_repository=extra.ota_repository,
            ota_trusted_root=(extra.ota_trusted_root or b"").decode())

    def renew(self, peer_cert: x509.Certificate, request: protocol.RenewRequest,
              peer: str) -> protocol.RenewResponse:
        """A new certificate for the same key, for a box that proved itself with the certificate
        it holds (mutual TLS); Refused otherwise. The old one stays valid until it expires
        (the box may not have stored the answer yet) and is revoked with the box."""
        ca = self.authority()
        device = common_name(peer_cert.subject)
        serial = serial_hex(peer_cert)
        if device is None or not any(a.issued(peer_cert)
                                     for a in self.material.authorities()):
            raise Refused(403, "unknown_certificate", "not a box certificate of this CA")
        box = self.claims.get(device)
        if box is None or box.enrolled_at is None:
            raise Refused(403, "unknown_device", f"{device} is not an enrolled box")
        if box.revoked_at is not None or self.claims.is_revoked_certificate(serial):
            raise Refused(403, "revoked", f"{device} or this certificate has been revoked")
        if serial not in dict(self.claims.certificates(device)):
            raise Refused(403, "unknown_certificate", f"{serial} is not a current certificate "
                                                      f"of {device}")
        try:
            csr = check_device_csr(request.csr, device)
        except CsrRefused as exc:
            raise Refused(403 if exc.code == "forged_subject" else 400, exc.code,
                          str(exc)) from None
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        if public_key_fingerprint(key) != box.tls_key:
            raise Refused(403, "wrong_key", "renewal keeps the box's key; a new key means "
                                            "enrolling again")
        cert = ca.issue_client(key, device, self.settings.cert_days)
        certificate, new_serial = cert_pem(cert).decode(), serial_hex(cert)
        with self.db.transaction():
            self.claims.renewed(device, cert_pem=certificate, cert_serial=new_serial,
                                cert_not_after=cert.not_valid_after_utc.timestamp())
            self.identities.certificate(device, new_serial, fingerprint(cert))
        log.info("certificate_renewed device=%s peer=%s old=%s serial=%s not_after=%s", device,
                 peer, serial, new_serial, cert.not_valid_after_utc.date().isoformat())
        return protocol.RenewResponse(device=device, certificate=certificate,
                                      ca=ca.pem.decode())

    # -- the broker's files ------------------------------------------------------------------------

    async def sync_broker(self, why: str) -> None:
        """Rewrite the CRL (re-signed) and the ACL from the database, then reload the broker."""
        revoked = [Revoked(serial, dt.datetime.fromtimestamp(at, dt.UTC))
                   for serial, at in self.claims.revoked_certificates()]
        changed = write_broker_state(
            self.material, self.authority(), controllers=[self.controller_id], revoked=revoked,
            revoked_devices=self.claims.revoked_devices(), crl_days=self.settings.crl_days)
        log.info("broker_files_written why=%s revoked_certificates=%d acl_changed=%s", why,
                 len(revoked), changed)
        await self.reload_broker(why)

    async def renew_central(self, why: str) -> None:
        """The broker's, the HTTPS sites' and the controller's own certificates, renewed before
        they expire and put to use without a restart: the broker rereads its certificate on
        SIGHUP, the sites and the MQTT link load theirs for their next handshakes."""
        try:
            renew_central(self.material, self.authority(), controller=self.controller_id,
                          cert_days=self.settings.server_cert_days)
        except (OSError, ValueError) as exc:
            log.error("central_certificates_failed why=%s error=%s", why, exc)
            return
        self.enrollment.reload_certificate()
        self.renewal.reload_certificate()
        with contextlib.suppress(LinkError):
            self.link.reload_certificate()
        await self.reload_broker(f"central_certificates:{why}")
        cert = x509.load_pem_x509_certificate(self.material.broker.cert.read_bytes())
        log.info("central_certificates_renewed why=%s not_after=%s", why,
                 cert.not_valid_after_utc.date().isoformat())

    def crl_due(self, now: dt.datetime | None = None) -> bool:
        """Re-sign when the CRL is `crl_refresh_hours` old, or half its life is gone (a
        shorter `crl_days`), or it cannot be read."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            crl = x509.load_pem_x509_crl(self.material.broker.crl.read_bytes())
        except (OSError, ValueError):
            return True
        if crl.next_update_utc is None:
            return True
        signed = crl.last_update_utc + BACKDATE
        age, left = now - signed, crl.next_update_utc - now
        return (age >= dt.timedelta(hours=self.settings.crl_refresh_hours)
                or left < dt.timedelta(days=self.settings.crl_days / 2))

    async def reload_broker(self, why: str) -> bool:
        argv = list(self.settings.broker_reload)
        if not argv:
            log.warning("broker_reload_skipped why=%s reason=provisioning.broker_reload is empty",
                        why)
            return False
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            async with asyncio.timeout(30):
                output, _ = await process.communicate()
        except (OSError, TimeoutError) as exc:
            log.error("broker_reload_failed why=%s command=%s error=%s", why, " ".join(argv),
                      exc)
            return False
        if process.returncode != 0:
            log.error("broker_reload_failed why=%s command=%s status=%s output=%s", why,
                      " ".join(argv), process.returncode,
                      output.decode(errors="replace").strip()[:300])
            return False
        log.info("broker_reloaded why=%s", why)
        return True

    # -- revocation --------------------------------------------------------------------------------

    async def revoke(self, device: str, reason: str) -> Revocation:
        async with self._lock:
            box = self.claims.get(device)
            if box is None and self.identities.get(device) is None:
                raise KeyError(device)
            at = time.time()
            probe_key = new_key()
            probe = self.authority().issue_client(probe_key.public_key(), "revocation-probe",
                                         EPHEMERAL_DAYS)
            serials = []
            with self.db.transaction():
                if box is not None:
                    box = self.claims.revoke(device, reason, at)
                    # Every unexpired certificate: a renewed box still holds its previous one.
                    for serial, not_after in self.claims.certificates(device, at):
                        self.claims.add_revoked_certificate(
                            serial, device=device, not_after=not_after, reason=reason, at=at)
                        serials.append(serial)
                self._revoke_ephemeral(probe, device, "revocation probe", at)
                with contextlib.suppress(KeyError):
                    self.identities.revoke(device, reason, at)
            log.warning("device_revoking device=%s reason=%s serials=%s", device, reason,
                        ",".join(serials) or "-")
            # The archive judges by what it holds now, not by times the stolen key can sign.
            await asyncio.to_thread(self._freeze, device, reason)
            await self.sync_broker(f"revoke:{device}")
            refuses = await self._wait_refused(probe_key, probe)
            evictor_key = new_key()
            evictor = self.authority().issue_client(evictor_key.public_key(), device,
                                                    EPHEMERAL_DAYS)
            evicted = await self._take_over(device, evictor_key, evictor)
            with self.db.transaction():
                self._revoke_ephemeral(evictor, device, "session takeover", time.time())
            await self.sync_broker(f"revoke:{device}:takeover")
            await self._mark_lost(device, at)
            log.warning("device_revoked device=%s reason=%s serials=%s broker_refuses=%s "
                        "connection_cut=%s", device, reason, ",".join(serials) or "-",
                        refuses, evicted)
            return Revocation(device, reason, at, serials, refuses, evicted)

    async def _mark_lost(self, device: str, at: float) -> None:
        """The box's own Last Will is refused by its deny-all ACL: say it for the box, retained,
        so neither the registry nor a later subscription sees it as still online."""
        registry = self.registry
        registry.set_extra(device, "revoked_at", at)
        known = registry.get(device)
        if known is None or known.seq < 0:
            return
        lost = protocol.DeviceState(state="lost", seq=known.seq, ts=protocol.now_ms())
        registry.on_state(device, lost)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.link.publish(
                    protocol.state_topic(device), protocol.encode(lost), retain=True)

    def _revoke_ephemeral(self, cert: x509.Certificate, device: str, reason: str,
                          at: float) -> None:
        self.claims.add_revoked_certificate(serial_hex(cert), device=device, reason=reason,
                                            not_after=cert.not_valid_after_utc.timestamp(),
                                            at=at)

    def _broker_tls(self) -> tuple[str, int, Path] | None:
        m = self.config.mqtt
        if not m.tls:
            return None
        return m.host, m.port, self.material.controller_ca

    async def _wait_refused(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
                            timeout: float = 10.0) -> bool:
        """Poll the broker with a certificate from the new CRL until it refuses it."""
        target = self._broker_tls()
        if target is None:
            log.warning("broker_probe_skipped reason=the controller does not use TLS")
            return False
        deadline = time.monotonic() + timeout
        with credentials(self.material.dir, key, cert) as (cert_file, key_file):
            while time.monotonic() < deadline:
                if await asyncio.to_thread(handshake_refused, *target, cert_file, key_file):
                    return True
                await asyncio.sleep(0.2)
        log.error("broker_still_accepts_revoked timeout=%.0fs hint=%s", timeout,
                  "check provisioning.broker_reload and the broker's crlfile")
        return False

    async def _take_over(self, device: str, key: ec.EllipticCurvePrivateKey,
                         cert: x509.Certificate) -> bool:
        target = self._broker_tls()
        if target is None:
            log.warning("broker_takeover_skipped reason=the controller does not use TLS")
            return False
        with credentials(self.material.dir, key, cert) as (cert_file, key_file):
            return await asyncio.to_thread(connect_once, *target, cert_file, key_file, device)


class Unavailable(errors.Unavailable, RuntimeError):
    """Provisioning is not set up on this controller (no CA yet)."""


def _device_id(kind: str, place: str) -> str:
    return "-".join(filter(None, (KIND_PREFIX[kind], place, secrets.token_hex(3))))


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")
