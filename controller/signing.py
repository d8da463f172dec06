"""The controller's Ed25519 signing key: what boxes check controller-signed configuration with.

Created on first start in the data directory, mode 0600; its public half reaches each box at
enrollment (`<state dir>/identity/controller.pub`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.firmware.evidence.identity import write_private

log = logging.getLogger(__name__)


class SigningKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"controller signing key {path} is not an Ed25519 key")
        else:
            key = Ed25519PrivateKey.generate()
            write_private(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            log.info("controller_signing_key_created path=%s", path)
        self._key = key

    def public_raw(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)
