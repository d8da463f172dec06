"""The box's signing key: created once on the box, private to the agent, stable across runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.controller.identities import Identities
from tiepdan.controller.store import Database
from tiepdan.firmware.evidence.identity import Identity, IdentityError


def test_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    first = Identity(tmp_path)
    public = first.signing_public_raw()
    assert os.stat(first.signing_key_file).st_mode & 0o077 == 0
    again = Identity(tmp_path)
    assert again.signing_public_raw() == public
    signature = again.signing_key().sign(b"segment")
    Ed25519PublicKey.from_public_bytes(public).verify(signature, b"segment")


def test_a_damaged_key_is_an_error_not_a_silent_new_identity(tmp_path: Path) -> None:
    identity = Identity(tmp_path)
    identity.signing_key()
    identity.signing_key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n")
    with pytest.raises(IdentityError, match="unreadable"):
        Identity(tmp_path).signing_key()


def test_controller_binds_and_revokes_identities(tmp_path: Path, database: Path | str) -> None:
    identities = Identities(Database(database))
    key = Identity(tmp_path / "box").signing_public_raw()
    bound = identities.bind("xa-a", key, cert_serial="0a")
    assert bound.trusted_at(bound.enrolled_at + 1000)
    revoked = identities.revoke("xa-a", "stolen", at=bound.enrolled_at + 10)
    assert revoked.trusted_at(bound.enrolled_at + 9)
    assert not revoked.trusted_at(bound.enrolled_at + 10)
    with pytest.raises(KeyError):
        identities.revoke("xa-unknown", "lost")
    with pytest.raises(ValueError):
        identities.bind("xa-b", b"short")
