"""The box-facing HTTPS listener: the archive's upload endpoints and the OTA repository.

Apart from the admin API (which stays on loopback), because boxes reach it from commune halls.
TLS requires a client certificate from the provisioning CA, checked against the CRL the
controller writes for the broker: each handshake uses a context built from the CRL file as it
is now (rebuilt when the file changes, swapped in from the SNI callback, which OpenSSL calls
on every handshake). On top of that every request is checked against the database: the
certificate must not be revoked, its CN must be an enrolled box that is not revoked, and, when
enrollment recorded one, the serial must be the box's current certificate. The CN is then the
box the handlers see (`access.box_of`), so a box can only write and read its own recordings.

Connections idle for `[boxes] idle_timeout` are closed; a request body that stalls for
`[boxes] read_timeout` is cut (see `controller.http.archive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from tiepdan.controller.enrollment.provisioning import broker_address, material_for
from tiepdan.controller.http.access import Caller, access_middleware, check_routes
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.errors import Unauthorized
from tiepdan.provisioning.ca import serial_hex
from tiepdan.provisioning.material import Material

if TYPE_CHECKING:
    from tiepdan.controller.config import ControllerConfig
    from tiepdan.controller.identities import Identities
    from tiepdan.controller.service import Controller
    from tiepdan.provisioning.claims import ClaimStore

log = logging.getLogger(__name__)

WAIT_S = 0.5
MAX_BODY = 64 * 1024  # uploads stream; only small JSON bodies are read whole


class FreshContext:
    """The listener's TLS context, rebuilt whenever the CRL file changes."""

    def __init__(self, material: Material) -> None:
        self.material = material
        self._stamp = self._crl_stamp()
        self.current = server_context(material)
        self.entry = server_context(material)  # what the site holds; hands each handshake over
        self.entry.sni_callback = self._handshake

    def _crl_stamp(self) -> tuple[int, int] | None:
        try:
            found = self.material.broker.crl.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size

    def _handshake(self, connection: ssl.SSLObject, server_name: str | None,
                   context: ssl.SSLContext) -> None:
        stamp = self._crl_stamp()
        if stamp != self._stamp:
            try:
                self.current = server_context(self.material)
                self._stamp = stamp
                log.info("boxes_crl_reloaded crl=%s", self.material.broker.crl)
            except (OSError, ssl.SSLError) as exc:  # half-written: the next handshake retries
                log.warning("boxes_crl_unreadable error=%s", exc)
        connection.context = self.current


def server_context(material: Material) -> ssl.SSLContext:
    """TLS 1.2+, the controller's server certificate, a client certificate required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(material.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(material.enroll_cert, material.enroll_key)
    if material.broker.crl.exists():
        context.load_verify_locations(cafile=str(material.broker.crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class BoxListener:
    """The listener; its routes are added by the composition root (archive, updates)."""

    def __init__(self, controller: Controller, config: ControllerConfig, identities: Identities,
                 claims: ClaimStore) -> None:
        self.config = config
        self.settings = config.boxes
        self.material = material_for(config)
        self._identities = identities
        self._claims = claims
        self.port: int | None = None
        self.started = asyncio.Event()
        self.app = web.Application(
            middlewares=[access_middleware([self.identify], "boxes")],
            client_max_size=MAX_BODY)
        self.app[CONTROLLER_KEY] = controller
        self.app.on_startup.append(_check_routes)

    @property
    def url(self) -> str:
        """Where boxes reach this listener (for OTA job documents and box configuration)."""
        if self.settings.url:
            return self.settings.url.rstrip("/")
        host, _ = broker_address(self.config)
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.port or self.settings.port}"

    def _ready(self) -> bool:
        m = self.material
        return m.exists() and m.enroll_cert.exists() and m.broker.crl.exists()

    async def run(self) -> None:
        """Serve once the provisioning CA exists (`tiepdan-provision ca init`), until cancelled."""
        if not self._ready():
            log.warning("boxes_waiting reason=no_ca hint=%s",
                        "run `tiepdan-provision ca init`; boxes cannot upload or update before")
        while True:
            if self._ready():
                break
            await asyncio.sleep(WAIT_S)
        runner = web.AppRunner(self.app, access_log=None,
                               keepalive_timeout=self.settings.idle_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port,
                               ssl_context=FreshContext(self.material).entry)
            try:
                await site.start()
            except OSError as exc:
                log.error("boxes_unavailable host=%s port=%s error=%s", self.settings.host,
                          self.settings.port, exc)
                return
            self.port = int(runner.addresses[0][1])
            log.info("boxes_start url=%s listen=%s:%d read_timeout=%g idle_timeout=%g",
                     self.url, self.settings.host, self.port, self.settings.read_timeout,
                     self.settings.idle_timeout)
            self.started.set()
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(runner.cleanup())

    async def identify(self, request: web.Request) -> Caller | None:
        """The enrolled box a verified client certificate speaks for."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            raise Unauthorized("the client certificate has no CN")
        device, serial = str(names[0].value), serial_hex(cert)
        if self._claims.certificate_revoked(serial):
            raise Unauthorized(f"certificate {serial} is revoked")
        identity = self._identities.get(device)
        if identity is None or identity.revoked_at is not None:
            raise Unauthorized(f"{device!r} is not an enrolled box (or it was revoked)")
        if identity.cert_serial and identity.cert_serial != serial:
            raise Unauthorized(f"certificate {serial} is not the one enrolled for {device}")
        return Caller(device, box=device)


async def _check_routes(app: web.Application) -> None:
    check_routes(app)
