"""The box's own keys, created on the box and never exported.

The Ed25519 signing key attributes the box's recordings (manifest records are signed with it);
its public half is bound to the device at enrollment. Keys live under `<state dir>/identity/`,
readable by the agent's user only. Provisioning adds the TLS key and certificate beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.errors import Unavailable
from tiepdan.firmware.core.durable import write_atomic

log = logging.getLogger(__name__)


class IdentityError(Unavailable, RuntimeError):
    pass


def write_private(path: Path, data: bytes) -> None:
    """Create a secret file with mode 0600 from the first byte (no window with wider rights)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, 0o600)


class Identity:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "identity"
        self._signing: Ed25519PrivateKey | None = None

    @property
    def signing_key_file(self) -> Path:
        return self.dir / "sign.key"

    def signing_key(self) -> Ed25519PrivateKey:
        """Load the signing key, creating it on first use."""
        if self._signing is not None:
            return self._signing
        path = self.signing_key_file
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise IdentityError(f"signing key {path} is unreadable: {exc}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise IdentityError(f"signing key {path} is not an Ed25519 key")
        else:
            key = Ed25519PrivateKey.generate()
            write_private(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            log.info("identity_signing_key_created path=%s", path)
        self._signing = key
        return key

    def signing_public_raw(self) -> bytes:
        return self.signing_key().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
