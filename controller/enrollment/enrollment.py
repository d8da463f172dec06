"""The enrollment endpoint: boxes trade a claim token and a CSR for a certificate, over HTTPS.

Its own aiohttp site, apart from the admin API (which stays on loopback): boxes reach it from
commune halls, with nothing but the CA certificate from their SD card to check it by. Every
request is rate-limited per peer address before anything else is done, bodies are capped, and
every refusal is logged with its reason (never with the token).
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
import ssl
import time
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.controller.http.access import allow, check_routes
from tiepdan.errors import Forbidden
from tiepdan.firmware import protocol
from tiepdan.provisioning.dynsec import DynsecError

if TYPE_CHECKING:
    from tiepdan.controller.enrollment.provisioning import Provisioning


class Refused(Forbidden):
    """An enrollment the controller will not grant: HTTP status, a code and the reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_PEERS = 10_000


class RateLimiter:
    """A token bucket per key (peer address): `rate` requests a second, bursts of `burst`.

    The table is bounded: the least recently seen peers are forgotten first, which only ever
    gives a forgotten peer a fresh bucket.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_PEERS) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_keys
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


def refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None
            ) -> web.Response:
    body = protocol.encode({"error": protocol.EnrollRefusal(code=code, message=message[:1000])})
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


async def read_request(request: web.Request, kind: type[T], event: str,
                       peer: str) -> T | web.Response:
    """The decoded body, or the refusal to answer with (logged as `<event>_refused`)."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        log.warning("%s_refused peer=%s code=too_large", event, peer)
        return refusal(413, "too_large", f"request larger than {MAX_BODY} bytes")
    try:
        return protocol.decode(body, kind)
    except protocol.ProtocolError as exc:
        log.warning("%s_refused peer=%s code=bad_request error=%s", event, peer, exc)
        return refusal(400, "bad_request", str(exc))


class Enrollment:
    def __init__(self, provisioning: Provisioning) -> None:
        self._provisioning = provisioning
        settings = provisioning.settings
        self.limiter = RateLimiter(settings.enroll_rate, settings.enroll_burst)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._context: ssl.SSLContext | None = None

    async def start(self) -> None:
        settings = self._provisioning.settings
        material = self._provisioning.material
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(material.enroll_cert, material.enroll_key)
        self._context = context
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([web.post(protocol.ENROLL_PATH, self.handle)])
        check_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.enroll_host, settings.enroll_port,
                           ssl_context=context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("enrollment_start url=https://%s:%d%s rate=%g/s burst=%d",
                 settings.enroll_host, self.port, protocol.ENROLL_PATH, self.limiter.rate,
                 self.limiter.burst)

    def reload_certificate(self) -> None:
        """The renewed server certificate, for every handshake from now on."""
        if self._context is not None:
            material = self._provisioning.material
            self._context.load_cert_chain(material.enroll_cert, material.enroll_key)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @allow("public")
    async def handle(self, request: web.Request) -> web.Response:
        peer = request.remote or "unknown"
        wait = self.limiter.take(peer)
        if wait:
            log.warning("enroll_rate_limited peer=%s retry_after=%.1f", peer, wait)
            return refusal(429, "rate_limited", "too many enrollment requests from this "
                           "address", headers={"Retry-After": f"{max(1, round(wait))}"})
        enroll = await read_request(request, protocol.EnrollRequest, "enroll", peer)
        if isinstance(enroll, web.Response):
            return enroll
        try:
            answer = self._provisioning.enroll(enroll, peer)
        except Refused as exc:
            log.warning("enroll_refused device=%s commune=%s peer=%s code=%s error=%s",
                        enroll.device, enroll.commune, peer, exc.code, exc)
            return refusal(exc.status, exc.code, str(exc))
        try:
            # Before the box has its certificate: a box the broker's subscribe rules do not know
            # would be checked by the ACL file alone. The box retries; the answer is the same.
            await self._provisioning.admit([enroll.device])
        except DynsecError as exc:
            log.error("enroll_deferred device=%s peer=%s reason=broker_rules error=%s",
                      enroll.device, peer, exc)
            return refusal(503, "unavailable", "the broker is not ready for this box yet")
        return web.Response(body=protocol.encode(answer), content_type="application/json")


def check_sign_key(request: protocol.EnrollRequest) -> bytes:
    """The Ed25519 public key, once its proof of possession verifies; Refused otherwise."""
    try:
        sign_key = base64.b64decode(request.sign_key, validate=True)
        public = Ed25519PublicKey.from_public_bytes(sign_key)
    except (ValueError, binascii.Error) as exc:
        raise Refused(400, "bad_sign_key", f"not an Ed25519 public key: {exc}") from None
    if not request.sign_proof:
        raise Refused(400, "no_proof", "the request carries no proof of possession of the "
                                       "signing key (firmware older than issue 15?)")
    challenge = protocol.enroll_challenge(request.device, request.token, request.csr,
                                          request.sign_key)
    try:
        public.verify(base64.b64decode(request.sign_proof, validate=True), challenge)
    except (InvalidSignature, ValueError, binascii.Error):
        raise Refused(403, "bad_proof", "the signing key's proof of possession does not "
                                        "verify for this token and CSR") from None
    return sign_key
