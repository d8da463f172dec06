"""The box renews its own certificate before it expires, over mutual TLS (issue 15).

A box certificate lives at most a year (`provisioning.cert_days`). When less than
`renewal.renew_fraction` of its life is left, the agent sends a CSR for the key it already has
to the controller's renewal endpoint, authenticated by the certificate it still holds, checks the
answer as enrollment does (its key, its id, the SD card's CA), replaces the certificate file
atomically and loads it into the MQTT link for the next connection: the connection that is up
is not touched. The key stays (a new key means enrolling again), so there is never a moment where
key and certificate on disk do not match. A box whose certificate has already expired cannot
renew (the handshake refuses it) and needs a new claim token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tiepdan.errors import Unavailable
from tiepdan.firmware import protocol
from tiepdan.firmware.core.durable import write_atomic
from tiepdan.firmware.core.mqtt import LinkError
from tiepdan.firmware.firstboot.enroll import (
    check_certificate,
    make_csr,
    parse_refusal,
    parse_retry_after,
)
from tiepdan.firmware.protocol.firstboot import EnrollError

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent

log = logging.getLogger(__name__)


class RenewalFailed(Unavailable, RuntimeError):
    """This attempt did not renew; `refused` when the controller said no (not the network)."""

    def __init__(self, message: str, *, refused: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.refused = refused
        self.retry_after = retry_after


def due(cert: x509.Certificate, now: float, fraction: float) -> bool:
    """Less than `fraction` of the certificate's life left at `now` (epoch seconds)?"""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return end - now < fraction * (end - start)


class CertificateRenewal:
    def __init__(self, agent: Agent) -> None:
        self.settings = agent.config.renewal
        self.device = agent.device
        self.link = agent.link
        self.tls = agent.link.settings.tls
        # Injectable so a test can move time forward without waiting a year.
        self.clock: Callable[[], float] = time.time
        self.checks = 0
        self.renewals = 0

    async def run(self) -> None:
        tls = self.tls
        if not self.settings.url or tls is None or tls.cert_file is None or \
                tls.key_file is None:
            log.info("renewal_disabled device=%s reason=%s", self.device,
                     "no renewal.url" if not self.settings.url else "no TLS certificate")
            await asyncio.Event().wait()  # an agent task only ends with the agent
        delay = self.settings.retry_min
        while True:
            try:
                await self.check()
                pause, delay = self.settings.check_interval, self.settings.retry_min
            except RenewalFailed as exc:
                level = logging.ERROR if exc.refused else logging.WARNING
                pause = exc.retry_after if exc.retry_after is not None else \
                    delay / 2 + random.uniform(0, delay / 2)
                log.log(level, "renewal_failed device=%s refused=%s retry_s=%.1f error=%s",
                        self.device, exc.refused, pause, exc)
                delay = min(delay * 2, self.settings.retry_max)
            await asyncio.sleep(pause)

    async def check(self) -> bool:
        """Renew when due; True when a new certificate is now in place."""
        assert self.tls is not None and self.tls.cert_file and self.tls.key_file
        self.checks += 1
        cert_file, key_file, ca_file = self.tls.cert_file, self.tls.key_file, self.tls.ca_file
        try:
            cert_pem, key_pem, ca_pem = await asyncio.to_thread(
                lambda: (cert_file.read_bytes(), key_file.read_bytes(), ca_file.read_bytes()))
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError) as exc:
            raise RenewalFailed(f"unreadable TLS material: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RenewalFailed(f"{key_file} is not an EC key", refused=True)
        now = self.clock()
        if not due(cert, now, self.settings.renew_fraction):
            return False
        left = cert.not_valid_after_utc - dt.datetime.fromtimestamp(now, dt.UTC)
        log.info("renewal_start device=%s serial=%x days_left=%.1f", self.device,
                 cert.serial_number, left.total_seconds() / 86400)
        response = await self._post(make_csr(key, self.device), cert_file, key_file, ca_file)
        try:
            fresh = check_certificate(response, device=self.device, ca_pem=ca_pem, key=key)
        except EnrollError as exc:
            raise RenewalFailed(str(exc), refused=True) from None
        try:
            await asyncio.to_thread(write_atomic, cert_file, response.certificate.encode(),
                                    0o644)
            self.link.reload_certificate()
        except (OSError, LinkError) as exc:
            raise RenewalFailed(f"could not put the new certificate in place: {exc}") from None
        self.renewals += 1
        log.info("certificate_renewed device=%s old=%x serial=%x not_after=%s", self.device,
                 cert.serial_number, fresh.serial_number,
                 fresh.not_valid_after_utc.date().isoformat())
        return True

    async def _post(self, csr: str, cert_file: Path, key_file: Path,
                    ca_file: Path) -> protocol.RenewResponse:
        def context() -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(cert_file), str(key_file))
            return ctx

        try:
            ctx = await asyncio.to_thread(context)
        except (OSError, ssl.SSLError) as exc:
            raise RenewalFailed(f"TLS material unusable: {exc}") from None
        body = protocol.encode(protocol.RenewRequest(csr=csr))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                    session.post(self.settings.url, data=body, ssl=ctx,
                                 headers={"Content-Type": "application/json"}) as reply:
                data = await reply.read()
                if reply.status == 200:
                    try:
                        return protocol.decode(data, protocol.RenewResponse)
                    except protocol.ProtocolError as exc:
                        raise RenewalFailed(f"bad answer: {exc}", refused=True) from None
                refusal = parse_refusal(data)
                transient = reply.status in (408, 429) or reply.status >= 500
                raise RenewalFailed(f"HTTP {reply.status} {refusal.code}: {refusal.message}",
                                    refused=not transient,
                                    retry_after=parse_retry_after(
                                        reply.headers.get("Retry-After")))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RenewalFailed(f"{type(exc).__name__}: {exc}") from None
