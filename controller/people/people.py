"""Everyone who uses the controller: accounts, signed-in sessions, API tokens, the audit log.

One object so the HTTP layer asks one place "who is this?" and "may they?".
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from tiepdan.controller.config import ConsoleSection
from tiepdan.controller.people.audit import AuditLog
from tiepdan.controller.people.caller import Caller
from tiepdan.controller.people.login_limit import LoginLimit
from tiepdan.controller.people.logins import Login, Logins
from tiepdan.controller.people.tokens import ApiTokens
from tiepdan.controller.people.users import Users
from tiepdan.controller.store import Database
from tiepdan.errors import Unauthorized

log = logging.getLogger(__name__)


class LoginRefused(Unauthorized):
    """Wrong name or password (`retry_after` 0), or too many failures (seconds to wait)."""

    def __init__(self, retry_after: float = 0.0) -> None:
        super().__init__("too many failed logins" if retry_after else "wrong name or password")
        self.retry_after = retry_after


class People:
    def __init__(self, db: Database, config: ConsoleSection, admin_token: str) -> None:
        self.config = config
        self.users = Users(db)
        self.logins = Logins(db, config.session_idle, config.session_lifetime)
        self.tokens = ApiTokens(db)
        self.audit = AuditLog(db)
        self.limit = LoginLimit(config.login_failures, config.login_window)
        self._admin_token = admin_token

    async def login(self, name: str, password: str, peer: str) -> tuple[str, Login]:
        """Check a password (in a thread: argon2 is slow on purpose) and open a session."""
        wait = self.limit.retry_after(name, peer)
        if wait > 0:
            log.warning("login_throttled user=%s peer=%s retry_after=%.0f", name, peer, wait)
            raise LoginRefused(wait)
        user = await asyncio.to_thread(self.users.verify, name, password)
        if user is None:
            self.limit.failed(name, peer)
            log.warning("login_failed user=%s peer=%s", name, peer)
            raise LoginRefused()
        self.limit.succeeded(name)
        cookie, login = self.logins.start(user.name)
        self.audit.record(user.name, "login", user.name, peer=peer)
        return cookie, login

    def from_cookie(self, cookie: str) -> Caller | None:
        login = self.logins.resume(cookie)
        if login is None:
            return None
        user = self.users.get(login.user)
        if user is None or user.disabled:
            self.logins.end(cookie)
            return None
        return Caller(user.name, user.role, user.province, "cookie", login.csrf)

    def from_bearer(self, token: str) -> Caller | None:
        """A person's API token, or the legacy admin token (role admin, user "admin-token")."""
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Caller("admin-token", "admin", "", "admin-token")
        name = self.tokens.user_of(token)
        user = None if name is None else self.users.get(name)
        if user is None or user.disabled:
            return None
        return Caller(user.name, user.role, user.province, "token")
