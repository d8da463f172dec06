"""Whom a box seals its recordings to: the archive's age recipients, signed by the controller.

A box must never hold a key that decrypts what it recorded, and must not be talked into
encrypting to an attacker: it takes the recipients only from a document the controller signed
(verified with `<state>/identity/controller.pub`), caches the last good one at
`<state>/recording/recipients.json`, and refuses a document older than the cached one (a replay
of a recipient list the archive has since retired).
"""

from __future__ import annotations

import base64
import logging
import ssl
import time
from pathlib import Path

import aiohttp
import msgspec
import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.errors import BadInput
from tiepdan.firmware import protocol
from tiepdan.firmware.core.durable import write_atomic
from tiepdan.firmware.evidence.receipt import Signer, controller_key, signature_valid

log = logging.getLogger(__name__)

VERSION = 1
PATH = protocol.ARCHIVE_RECIPIENTS_PATH
MAX_DOCUMENT = 64 * 1024


class RecipientsDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    issued_utc_ms: int
    recipients: list[str]
    sig: str = ""

    def signed_bytes(self) -> bytes:
        return msgspec.json.encode(msgspec.structs.replace(self, sig=""), order="sorted")


class RecipientsError(BadInput):
    """A recipients document that is malformed, unsigned, stale, or names no usable recipient."""


def sign_document(recipients: list[str], private_key: Signer,
                  issued_utc_ms: int | None = None) -> bytes:
    """The signed document as served; `private_key` is an Ed25519 key or the controller's."""
    check_recipients(recipients)
    doc = RecipientsDocument(v=VERSION, recipients=list(recipients),
                             issued_utc_ms=issued_utc_ms or int(time.time() * 1000))
    signed = msgspec.structs.replace(
        doc, sig=base64.b64encode(private_key.sign(doc.signed_bytes())).decode())
    return msgspec.json.encode(signed, order="sorted")


def check_recipients(recipients: list[str]) -> None:
    if not recipients:
        raise RecipientsError("no recipients")
    for text in recipients:
        try:
            pyrage.x25519.Recipient.from_str(text)
        except pyrage.RecipientError as exc:
            raise RecipientsError(f"not an age X25519 recipient: {text[:80]!r}: {exc}") from None


def verify_document(data: bytes, key: Ed25519PublicKey) -> RecipientsDocument:
    """Parse and verify with the controller's public key."""
    try:
        doc = msgspec.json.decode(data, type=RecipientsDocument)
    except msgspec.DecodeError as exc:
        raise RecipientsError(f"not a recipients document: {exc}") from None
    if doc.v != VERSION:
        raise RecipientsError(f"unknown recipients document version {doc.v}")
    if not signature_valid(doc.signed_bytes(), doc.sig, key):
        raise RecipientsError("recipients document is not signed by this box's controller")
    check_recipients(doc.recipients)
    return doc


class Recipients:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "recording" / "recipients.json"
        self._doc: RecipientsDocument | None = None
        self._loaded = False

    def current(self) -> list[str] | None:
        """The verified cached recipients, or None when the box has none yet."""
        if not self._loaded:
            self._loaded = True
            self._doc = self._read_cache()
        return None if self._doc is None else list(self._doc.recipients)

    @property
    def issued_utc_ms(self) -> int | None:
        self.current()
        return None if self._doc is None else self._doc.issued_utc_ms

    def _read_cache(self) -> RecipientsDocument | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        key = controller_key(self.state_dir)
        if key is None:
            log.error("recipients_unverifiable path=%s reason=no_controller_key", self.path)
            return None
        try:
            return verify_document(data, key)
        except RecipientsError as exc:
            log.error("recipients_cache_invalid path=%s error=%s", self.path, exc)
            return None

    def accept(self, data: bytes) -> list[str]:
        """Verify a fetched document and cache it if it is not older than the cached one."""
        key = controller_key(self.state_dir)
        if key is None:
            raise RecipientsError("no controller key: the box has not enrolled")
        doc = verify_document(data, key)
        cached = self.issued_utc_ms
        if cached is not None and doc.issued_utc_ms < cached:
            raise RecipientsError(f"document issued {doc.issued_utc_ms} is older than the "
                                  f"cached one ({cached}): refused as a replay")
        if self._doc is None or doc != self._doc:
            write_atomic(self.path, data)
            log.info("recipients_updated count=%d issued_utc_ms=%d", len(doc.recipients),
                     doc.issued_utc_ms)
        self._doc = doc
        return list(doc.recipients)

    async def refresh(self, archive_url: str, timeout: float = 30.0,
                      tls: ssl.SSLContext | None = None) -> list[str]:
        """Fetch, verify and cache the archive's document; raises on any failure. `tls`
        carries the box's client certificate (the archive's listener requires it)."""
        url = archive_url.rstrip("/") + PATH
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                    http.get(url, ssl=tls if tls is not None else True) as reply:
                if reply.status != 200:
                    raise RecipientsError(f"GET {url}: HTTP {reply.status}")
                data = await reply.content.read(MAX_DOCUMENT + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RecipientsError(f"GET {url}: {exc!r}") from None
        if len(data) > MAX_DOCUMENT:
            raise RecipientsError(f"GET {url}: document larger than {MAX_DOCUMENT} bytes")
        return self.accept(data)
