"""Claim tokens: how a box proves, once, that a technician meant it to join the fleet.

A token is 256 random bits, written to the SD card's boot partition for one box and shown to
nobody. The controller keeps only its SHA-256, so a copy of the database yields no usable token
(a token has too much entropy for a slow hash to matter). A token is bound to one device id and
one commune, expires, and is spent by the first enrollment that succeeds with it. Only the box
that spent it may present it again (same TLS key and signing key, because it lost the answer);
it gets the same certificate back. Anyone else presenting a spent token is refused.

Device ids are never reused: a revoked box stays revoked, and its replacement gets a new id, so
recordings signed by the old box keep verifying against the old key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tiepdan.errors import Forbidden

# Its tables are created and changed only by controller/migrations/controller_db.py.

_COLUMNS = ("device, commune, hall, province, kind, token_expires, created_at, enrolled_at, "
            "enrolled_from, tls_key, sign_key, cert_pem, cert_serial, cert_not_after, revoked_at, "
            "revoked_reason")


class ClaimRefused(Forbidden):
    """A claim the controller refuses; `code` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Box:
    """One provisioned box, from its token to its certificate (and its revocation)."""

    device: str
    commune: str
    hall: str
    province: str
    kind: str
    token_expires: float
    created_at: float
    enrolled_at: float | None
    enrolled_from: str | None
    tls_key: str | None
    sign_key: bytes | None
    cert_pem: str | None
    cert_serial: str | None
    cert_not_after: float | None
    revoked_at: float | None
    revoked_reason: str | None

    def state(self, at: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.enrolled_at is not None:
            return "enrolled"
        return "expired" if (at or time.time()) >= self.token_expires else "waiting"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state()
        data["sign_key"] = self.sign_key.hex() if self.sign_key else None
        del data["cert_pem"]
        return data


class Connection(Protocol):
    """The controller's database connection (SQLite or PostgreSQL, `?` placeholders), or a
    `sqlite3.Connection`: this library never imports the controller."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


class ClaimStore:
    """Provisioned boxes and their claim tokens, in the controller's database.

    Methods do not open transactions: the caller wraps a claim and what it grants (the
    certificate, the identity binding) in one.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def issue(self, device: str, *, commune: str, hall: str, province: str = "",
              kind: str = "commune", ttl: float, at: float | None = None) -> tuple[str, Box]:
        """A fresh token for `device`; a box still waiting gets a new one (the old one dies)."""
        at = time.time() if at is None else at
        existing = self.get(device)
        if existing is not None and existing.revoked_at is not None:
            raise ClaimRefused("revoked", f"{device} was revoked; provision the replacement "
                                          "under a new device id")
        if existing is not None and existing.enrolled_at is not None:
            raise ClaimRefused("enrolled", f"{device} is already enrolled; revoke it first, "
                                           "then provision the box under a new device id")
        token = new_token()
        self._conn.execute(
            "INSERT INTO provisioned_boxes (device, commune, hall, province, kind, token_hash, "
            "token_expires, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(device) DO UPDATE SET commune=excluded.commune, hall=excluded.hall, "
            "province=excluded.province, kind=excluded.kind, token_hash=excluded.token_hash, "
            "token_expires=excluded.token_expires, created_at=excluded.created_at",
            (device, commune, hall, province, kind, token_hash(token), at + ttl, at))
        box = self.get(device)
        assert box is not None
        return token, box

    def claim(self, token: str, *, device: str, commune: str, tls_key: str, sign_key: bytes,
              at: float | None = None) -> Box:
        """Check a token for this device and commune; returns the box (with its certificate if
        this is the enrolling box asking again), or raises ClaimRefused."""
        at = time.time() if at is None else at
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM provisioned_boxes WHERE token_hash = ?",
                                 (token_hash(token),)).fetchone()
        if row is None:
            raise ClaimRefused("unknown_token", "no such claim token (mistyped, replaced or "
                                                "never issued)")
        box = Box(*row)
        if box.device != device:
            raise ClaimRefused("wrong_device", f"the token was issued for another device, not "
                                               f"{device}")
        if box.commune != commune:
            raise ClaimRefused("wrong_commune", f"the token was issued for commune "
                                                f"{box.commune}, not {commune}")
        if box.revoked_at is not None:
            raise ClaimRefused("revoked", f"{device} has been revoked")
        if box.enrolled_at is not None:
            if box.tls_key == tls_key and box.sign_key == sign_key:
                return box
            raise ClaimRefused("token_used", "the token has already been used")
        if at >= box.token_expires:
            raise ClaimRefused("expired", "the token has expired; issue a new one with "
                                          "tiepdan-provision new-box")
        return box

    def enrolled(self, device: str, *, tls_key: str, sign_key: bytes, cert_pem: str,
                 cert_serial: str, cert_not_after: float, peer: str,
                 at: float | None = None) -> None:
        cur = self._conn.execute(
            "UPDATE provisioned_boxes SET enrolled_at = ?, enrolled_from = ?, tls_key = ?, "
            "sign_key = ?, cert_pem = ?, cert_serial = ?, cert_not_after = ? "
            "WHERE device = ? AND enrolled_at IS NULL AND revoked_at IS NULL",
            (time.time() if at is None else at, peer, tls_key, sign_key, cert_pem, cert_serial,
             cert_not_after, device))
        if cur.rowcount != 1:
            raise ClaimRefused("token_used", "the token has already been used")

    def record_certificate(self, device: str, serial: str, not_after: float,
                           at: float | None = None) -> None:
        """Every certificate a box was given: a renewed box holds two valid ones for a while,
        and revocation must list both."""
        self._conn.execute(
            "INSERT INTO device_certificates (serial, device, not_after, issued_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (serial, device, not_after, time.time() if at is None else at))

    def certificates(self, device: str, at: float | None = None) -> list[tuple[str, float]]:
        """(serial, not after) of the box's certificates that have not expired, the current
        one included (also for boxes enrolled before this table existed)."""
        at = time.time() if at is None else at
        rows = self._conn.execute(
            "SELECT serial, not_after FROM device_certificates WHERE device = ? AND "
            "not_after > ? ORDER BY issued_at", (device, at))
        found = {serial: not_after for serial, not_after in rows}
        box = self.get(device)
        if box is not None and box.cert_serial and box.cert_not_after and \
                box.cert_not_after > at:
            found.setdefault(box.cert_serial, box.cert_not_after)
        return list(found.items())

    def renewed(self, device: str, *, cert_pem: str, cert_serial: str,
                cert_not_after: float) -> None:
        """The box's current certificate is now this one (same key, see renewal)."""
        cur = self._conn.execute(
            "UPDATE provisioned_boxes SET cert_pem = ?, cert_serial = ?, cert_not_after = ? "
            "WHERE device = ? AND enrolled_at IS NOT NULL AND revoked_at IS NULL",
            (cert_pem, cert_serial, cert_not_after, device))
        if cur.rowcount != 1:
            raise ClaimRefused("revoked", f"{device} is not an enrolled, unrevoked box")
        self.record_certificate(device, cert_serial, cert_not_after)

    def is_revoked_certificate(self, serial: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM revoked_certificates WHERE serial = ?",
                                 (serial,)).fetchone()
        return row is not None

    def revoke(self, device: str, reason: str, at: float) -> Box:
        self._conn.execute(
            "UPDATE provisioned_boxes SET revoked_at = ?, revoked_reason = ? "
            "WHERE device = ? AND revoked_at IS NULL", (at, reason, device))
        box = self.get(device)
        if box is None:
            raise KeyError(device)
        return box

    def add_revoked_certificate(self, serial: str, *, device: str, not_after: float,
                                reason: str, at: float) -> None:
        self._conn.execute(
            "INSERT INTO revoked_certificates (serial, device, not_after, revoked_at, "
            "reason) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (serial, device, not_after, at, reason))

    def revoked_certificates(self, at: float | None = None) -> list[tuple[int, float]]:
        """(serial, revoked at) of revoked certificates not yet expired: what the CRL lists."""
        rows = self._conn.execute(
            "SELECT serial, revoked_at FROM revoked_certificates WHERE not_after > ? "
            "ORDER BY revoked_at", (time.time() if at is None else at,))
        return [(int(serial, 16), revoked_at) for serial, revoked_at in rows]

    def certificate_revoked(self, serial: str) -> bool:
        """Is the certificate with this serial (lower-case hex) revoked? The CRL's source."""
        return self._conn.execute("SELECT 1 FROM revoked_certificates WHERE serial = ?",
                                  (serial,)).fetchone() is not None

    def revoked_devices(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT device FROM provisioned_boxes WHERE revoked_at IS NOT NULL ORDER BY device")
        return [device for (device,) in rows]

    def get(self, device: str) -> Box | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM provisioned_boxes WHERE device = ?",
                                 (device,)).fetchone()
        return None if row is None else Box(*row)

    def all(self) -> list[Box]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM provisioned_boxes ORDER BY device")
        return [Box(*row) for row in rows]
