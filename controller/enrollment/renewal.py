"""The renewal endpoint: an enrolled box trades the certificate it holds for a fresh one.

Its own HTTPS site with *mutual* TLS: the handshake needs a client certificate from the
provisioning CA, so nobody without a box's key reaches the handler; the handler then checks the
database (enrolled, not revoked, a current certificate of that box) because the TLS context does
not reload the CRL. Rate-limited per peer address like enrollment; bodies are capped.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509

from tiepdan.controller.enrollment.enrollment import (
    MAX_BODY,
    RateLimiter,
    Refused,
    read_request,
    refusal,
)
from tiepdan.firmware import protocol

if TYPE_CHECKING:
    from tiepdan.controller.enrollment.provisioning import Provisioning

log = logging.getLogger(__name__)


class RenewalSite:
    def __init__(self, provisioning: Provisioning) -> None:
        self._provisioning = provisioning
        settings = provisioning.settings
        self.limiter = RateLimiter(settings.enroll_rate, settings.enroll_burst)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        material = self._provisioning.material
        # Every live issuing CA: a box certified before a rotation renews into the new one.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                             cadata=material.trust_pem().decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(material.enroll_cert, material.enroll_key)
        return context

    async def start(self) -> None:
        settings = self._provisioning.settings
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([web.post(protocol.RENEW_PATH, self.handle)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._context = self.context()
        site = web.TCPSite(self._runner, settings.renew_host, settings.renew_port,
                           ssl_context=self._context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("renewal_start url=https://%s:%d%s", settings.renew_host, self.port,
                 protocol.RENEW_PATH)

    def reload_certificate(self) -> None:
        """The renewed server certificate and the current trust, for handshakes from now on."""
        if self._context is not None:
            material = self._provisioning.material
            self._context.load_cert_chain(material.enroll_cert, material.enroll_key)
            self._context.load_verify_locations(cadata=material.trust_pem().decode())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.remote or "unknown"
        wait = self.limiter.take(peer)
        if wait:
            log.warning("renew_rate_limited peer=%s retry_after=%.1f", peer, wait)
            return refusal(429, "rate_limited", "too many renewal requests from this address",
                           headers={"Retry-After": f"{max(1, round(wait))}"})
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; refuse rather than assume
            log.warning("renew_refused peer=%s code=no_certificate", peer)
            return refusal(403, "no_certificate", "a box certificate is required")
        cert = x509.load_der_x509_certificate(der)
        wanted = await read_request(request, protocol.RenewRequest, "renew", peer)
        if isinstance(wanted, web.Response):
            return wanted
        try:
            answer = self._provisioning.renew(cert, wanted, peer)
        except Refused as exc:
            log.warning("renew_refused subject=%s serial=%x peer=%s code=%s error=%s",
                        cert.subject.rfc4514_string()[:120], cert.serial_number, peer,
                        exc.code, exc)
            return refusal(exc.status, exc.code, str(exc))
        return web.Response(body=protocol.encode(answer), content_type="application/json")
