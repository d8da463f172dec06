"""The update signing keys: Ed25519, one PEM file per key, one folder per role.

Root keys belong offline (a removable medium kept in a safe, several holders for a threshold);
targets keys with the release admins; snapshot and timestamp keys online, on the controller,
which re-signs the timestamp before it expires. A passphrase (from the environment, never an
argument) encrypts the files it is given for.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, SSlibKey

from tiepdan.errors import NotFound

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp")
PASSPHRASE_ENV = "TIEPDAN_OTA_PASSPHRASE"


class KeyFileError(NotFound):
    """A key that is missing, unreadable or not the one the metadata expects."""


def role_dir(keys: Path, role: str) -> Path:
    """`<keys>/root`, `<keys>/targets`, and `<keys>/online` for snapshot and timestamp."""
    return keys / ("online" if role in ONLINE_ROLES else role)


def passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate(folder: Path, role: str, secret: bytes | None = None) -> CryptoSigner:
    """A new key written as `<folder>/<role>-<keyid prefix>.pem` (mode 0600)."""
    private = Ed25519PrivateKey.generate()
    signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), scheme="ed25519"))
    encryption = BestAvailableEncryption(secret) if secret else NoEncryption()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"{role}-{signer.public_key.keyid[:12]}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return signer


def load(folder: Path, role: str, secret: bytes | None = None) -> list[CryptoSigner]:
    """Every key of `role` found in `folder` (none when the folder does not exist)."""
    signers = []
    for path in sorted(folder.glob(f"{role}-*.pem")):
        try:
            private = load_pem_private_key(path.read_bytes(), secret)
        except (TypeError, ValueError) as exc:
            raise KeyFileError(f"cannot read {path}: {exc} "
                               f"(is {PASSPHRASE_ENV} set right?)") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 key")
        signers.append(CryptoSigner(private, SSlibKey.from_crypto(private.public_key(),
                                                                  scheme="ed25519")))
    return signers


def retire(folder: Path, keyids: set[str]) -> list[Path]:
    """Move the files of keys no longer trusted into `<folder>/retired/` (kept, not deleted)."""
    moved = []
    for signer_path in sorted(folder.glob("*.pem")):
        if any(signer_path.stem.endswith(keyid[:12]) for keyid in keyids):
            (folder / "retired").mkdir(mode=0o700, exist_ok=True)
            target = folder / "retired" / signer_path.name
            signer_path.replace(target)
            moved.append(target)
    return moved
