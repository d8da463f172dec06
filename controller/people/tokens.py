"""Per-user API tokens for the CLI and for WHIP clients, in place of one shared admin token.

Only a SHA-256 of each token is stored, so a copy of the database lets nobody in; the token is
shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from tiepdan.controller.store import Database

PREFIX = "tdu_"


@dataclass(frozen=True)
class ApiToken:
    id: str  # the first characters of the digest: enough to name it, useless to log in
    user: str
    label: str
    created: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokens:
    def __init__(self, db: Database) -> None:
        self._db = db

    def issue(self, user: str, label: str = "") -> tuple[str, ApiToken]:
        """A new token for `user`: (the secret, shown once; its record)."""
        token = PREFIX + secrets.token_urlsafe(32)
        digest, now = _digest(token), time.time()
        self._db.conn.execute(
            'INSERT INTO api_tokens (digest, "user", label, created) VALUES (?, ?, ?, ?)',
            (digest, user, label[:100], now))
        return token, ApiToken(digest[:12], user, label[:100], now)

    def user_of(self, token: str) -> str | None:
        if not token.startswith(PREFIX):
            return None
        digest = _digest(token)
        row = self._db.conn.execute('SELECT "user" FROM api_tokens WHERE digest = ?',
                                    (digest,)).fetchone()
        if row is None:
            return None
        self._db.conn.execute("UPDATE api_tokens SET last_used = ? WHERE digest = ?",
                              (time.time(), digest))
        return str(row[0])

    def revoke(self, user: str, token_id: str) -> bool:
        cur = self._db.conn.execute(
            'DELETE FROM api_tokens WHERE "user" = ? AND substr(digest, 1, 12) = ?',
            (user, token_id))
        return cur.rowcount > 0

    def of(self, user: str) -> list[ApiToken]:
        rows = self._db.conn.execute(
            'SELECT digest, "user", label, created FROM api_tokens WHERE "user" = ? '
            "ORDER BY created", (user,))
        return [ApiToken(r[0][:12], r[1], r[2], r[3]) for r in rows]
