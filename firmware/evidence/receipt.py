"""The archive's signed receipt for one stored segment: what lets a box delete its copy.

The archive (controller) signs each receipt with its Ed25519 key; a box verifies it with the
controller's public key written at enrollment (`<state>/identity/controller.pub`) and checks
that it names the very segment it uploaded. The archivist's `verify` checks the same receipts.
Signature convention as `firmware.manifest.Record`: Ed25519 over the struct encoded with sorted
keys and `sig=""` included.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Protocol

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.errors import Corrupt

VERSION = 1


class Signer(Protocol):
    """An Ed25519 private key, or the controller's `SigningKey`: anything that signs bytes."""

    def sign(self, data: bytes) -> bytes: ...


class Receipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    archive: str  # the controller id
    recorder: str
    session: str
    name: str
    index: int
    ct_sha256: str
    ct_size: int
    record_seq: int  # the manifest record that declared the segment
    received_utc_ms: int
    sig: str = ""

    def signed_bytes(self) -> bytes:
        return msgspec.json.encode(msgspec.structs.replace(self, sig=""), order="sorted")

    def line(self) -> bytes:
        return msgspec.json.encode(self, order="sorted")


class ReceiptError(Corrupt):
    """A receipt that does not parse, is not signed by the archive, or names another segment."""


def sign_receipt(receipt: Receipt, signer: Signer) -> Receipt:
    signature = signer.sign(receipt.signed_bytes())
    return msgspec.structs.replace(receipt, sig=base64.b64encode(signature).decode())


def parse_receipt(data: bytes | str) -> Receipt:
    try:
        return msgspec.json.decode(data, type=Receipt)
    except msgspec.DecodeError as exc:
        raise ReceiptError(f"not a receipt: {exc}") from None


def signature_valid(signed: bytes, sig: str, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(sig, validate=True), signed)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def check_receipt(receipt: Receipt, key: Ed25519PublicKey, *, session: str, recorder: str,
                  name: str, ct_sha256: str, ct_size: int) -> None:
    """Raise ReceiptError unless the archive signed this receipt for exactly this segment."""
    if receipt.v != VERSION:
        raise ReceiptError(f"unknown receipt version {receipt.v}")
    if not signature_valid(receipt.signed_bytes(), receipt.sig, key):
        raise ReceiptError("receipt signature does not verify with the controller's key")
    wanted = (session, recorder, name, ct_sha256, ct_size)
    got = (receipt.session, receipt.recorder, receipt.name, receipt.ct_sha256, receipt.ct_size)
    if got != wanted:
        raise ReceiptError(f"receipt names another segment: {got} != {wanted}")


def controller_key(state_dir: Path) -> Ed25519PublicKey | None:
    """The controller's public key from enrollment, or None before the box enrolled."""
    path = state_dir / "identity" / "controller.pub"
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except FileNotFoundError:
        return None
    except (OSError, binascii.Error, ValueError) as exc:
        raise ReceiptError(f"controller key {path} is unreadable: {exc}") from None
