"""Signed-in browser sessions: a random cookie, its CSRF token, an idle and an absolute expiry.

The cookie holds only a random id; the table keeps its SHA-256, so a leaked database cannot be
replayed as a cookie. Every state-changing form carries the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from tiepdan.controller.store import Database


@dataclass(frozen=True)
class Login:
    user: str
    csrf: str
    created: float


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Logins:
    def __init__(self, db: Database, idle: float, lifetime: float) -> None:
        self._db = db
        self.idle = idle
        self.lifetime = lifetime

    def start(self, user: str) -> tuple[str, Login]:
        """A new session for `user`: (the cookie value, the session)."""
        cookie, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.time()
        self._db.conn.execute(
            'INSERT INTO logins (digest, "user", csrf, created, seen) VALUES (?, ?, ?, ?, ?)',
            (_digest(cookie), user, csrf, now, now))
        return cookie, Login(user, csrf, now)

    def resume(self, cookie: str) -> Login | None:
        """The live session behind `cookie`, refreshing its idle timer; None once expired."""
        digest, now = _digest(cookie), time.time()
        row = self._db.conn.execute(
            'SELECT "user", csrf, created, seen FROM logins WHERE digest = ?', (digest,)).fetchone()
        if row is None:
            return None
        if now - row[2] > self.lifetime or now - row[3] > self.idle:
            self._db.conn.execute("DELETE FROM logins WHERE digest = ?", (digest,))
            return None
        if now - row[3] > 5:
            self._db.conn.execute("UPDATE logins SET seen = ? WHERE digest = ?", (now, digest))
        return Login(row[0], row[1], row[2])

    def alive(self, cookie: str) -> bool:
        """Whether the session behind `cookie` is still valid, without counting as activity
        (an open page's live stream must not keep an idle session alive)."""
        now = time.time()
        row = self._db.conn.execute("SELECT created, seen FROM logins WHERE digest = ?",
                                    (_digest(cookie),)).fetchone()
        return row is not None and now - row[0] <= self.lifetime and now - row[1] <= self.idle

    def end(self, cookie: str) -> None:
        self._db.conn.execute("DELETE FROM logins WHERE digest = ?", (_digest(cookie),))

    def end_all(self, user: str) -> None:
        """Sign `user` out everywhere (password change, account disabled)."""
        self._db.conn.execute('DELETE FROM logins WHERE "user" = ?', (user,))

    def prune(self) -> int:
        now = time.time()
        cur = self._db.conn.execute("DELETE FROM logins WHERE created < ? OR seen < ?",
                                    (now - self.lifetime, now - self.idle))
        return cur.rowcount


def csrf_matches(expected: str, given: str) -> bool:
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())
