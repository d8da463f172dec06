"""Which signing key speaks for which box, and since when it no longer does.

Enrollment binds a box's Ed25519 public key (created on the box) to its device id; revocation
records the moment the box stopped being trusted (lost or stolen). The archive verifies manifest
signatures against this table and refuses records signed after the revocation time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tiepdan.controller.store import Database

# Its tables are created and changed only by controller/migrations/controller_db.py.


@dataclass(frozen=True)
class DeviceIdentity:
    device: str
    sign_key: bytes
    cert_serial: str | None
    cert_fingerprint: str | None
    enrolled_at: float
    revoked_at: float | None
    revoked_reason: str | None

    def trusted_at(self, when: float) -> bool:
        """Was a signature made at `when` (epoch seconds) made while the box was trusted?"""
        return self.revoked_at is None or when < self.revoked_at


class Identities:
    def __init__(self, db: Database) -> None:
        self._db = db

    def bind(self, device: str, sign_key: bytes, *, cert_serial: str | None = None,
             cert_fingerprint: str | None = None) -> DeviceIdentity:
        if len(sign_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self._db.conn.execute(
            "INSERT INTO device_identities (device, sign_key, cert_serial, cert_fingerprint, "
            "enrolled_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
            "sign_key=excluded.sign_key, cert_serial=excluded.cert_serial, "
            "cert_fingerprint=excluded.cert_fingerprint, enrolled_at=excluded.enrolled_at, "
            "revoked_at=NULL, revoked_reason=NULL",
            (device, sign_key, cert_serial, cert_fingerprint, time.time()),
        )
        found = self.get(device)
        assert found is not None
        return found

    def revoke(self, device: str, reason: str, at: float | None = None) -> DeviceIdentity:
        cur = self._db.conn.execute(
            "UPDATE device_identities SET revoked_at = ?, revoked_reason = ? "
            "WHERE device = ? AND revoked_at IS NULL",
            (time.time() if at is None else at, reason, device),
        )
        found = self.get(device)
        if found is None:
            raise KeyError(device)
        if cur.rowcount == 0 and found.revoked_at is None:
            raise KeyError(device)
        return found

    def get(self, device: str) -> DeviceIdentity | None:
        row = self._db.conn.execute(
            "SELECT device, sign_key, cert_serial, cert_fingerprint, enrolled_at, revoked_at, "
            "revoked_reason FROM device_identities WHERE device = ?", (device,)).fetchone()
        return None if row is None else DeviceIdentity(*row)

    def all(self) -> list[DeviceIdentity]:
        rows = self._db.conn.execute(
            "SELECT device, sign_key, cert_serial, cert_fingerprint, enrolled_at, revoked_at, "
            "revoked_reason FROM device_identities ORDER BY device")
        return [DeviceIdentity(*row) for row in rows]

    def holders(self, sign_key: bytes) -> list[str]:
        """Every device this key is (or was, if revoked) bound to: a key speaks for one box."""
        rows = self._db.conn.execute(
            "SELECT device FROM device_identities WHERE sign_key = ? ORDER BY device",
            (sign_key,))
        return [row[0] for row in rows]

    def certificate(self, device: str, cert_serial: str, cert_fingerprint: str) -> None:
        """A renewed certificate for the same, still trusted, binding."""
        self._db.conn.execute(
            "UPDATE device_identities SET cert_serial = ?, cert_fingerprint = ? "
            "WHERE device = ? AND revoked_at IS NULL", (cert_serial, cert_fingerprint, device))
