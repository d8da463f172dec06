"""People who use the console and the API: name, role, province, argon2 password hash.

Hashing and verifying are deliberately slow (argon2id), so callers on the event loop run them in
a thread (`asyncio.to_thread`). A wrong name costs the same as a wrong password, so timing does
not tell which names exist.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tiepdan.controller.people.roles import check_role
from tiepdan.controller.store import Database
from tiepdan.errors import BadInput

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}\Z")
PROVINCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}\Z")
MIN_PASSWORD = 10
MAX_PASSWORD = 256


class UserError(BadInput):
    """Bad input for a user; `code` is stable for the API, the message says what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class User:
    name: str
    role: str
    province: str
    created: float
    disabled: bool


class Users:
    def __init__(self, db: Database, hasher: PasswordHasher | None = None) -> None:
        self._db = db
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash("not a password of anyone")

    def add(self, name: str, role: str, password: str, province: str = "") -> User:
        """Create a user (blocking: hashes the password)."""
        check_name(name)
        try:
            role = check_role(role)
        except ValueError as exc:
            raise UserError("bad_role", str(exc)) from None
        if role == "operator" and not province:
            raise UserError("bad_province", "an operator needs a province (--province)")
        if province and not PROVINCE.fullmatch(province):
            raise UserError("bad_province", f"province {province!r}: lowercase letters, digits "
                                            "and '-', at most 16")
        check_password(password)
        if self.get(name) is not None:
            raise UserError("exists", f"user {name!r} already exists")
        self._db.conn.execute(
            "INSERT INTO users (name, role, province, password, created) VALUES (?, ?, ?, ?, ?)",
            (name, role, province, self._hasher.hash(password), time.time()))
        found = self.get(name)
        assert found is not None
        return found

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        cur = self._db.conn.execute("UPDATE users SET password = ? WHERE name = ?",
                                    (self._hasher.hash(password), name))
        if cur.rowcount == 0:
            raise UserError("not_found", f"no user {name!r}")

    def set_disabled(self, name: str, disabled: bool) -> None:
        cur = self._db.conn.execute("UPDATE users SET disabled = ? WHERE name = ?",
                                    (int(disabled), name))
        if cur.rowcount == 0:
            raise UserError("not_found", f"no user {name!r}")

    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is right and the account enabled (blocking)."""
        row = self._db.conn.execute("SELECT password FROM users WHERE name = ?",
                                    (name,)).fetchone()
        stored = row[0] if row is not None else self._dummy
        try:
            self._hasher.verify(stored, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        user = self.get(name)
        if user is None or user.disabled:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._db.conn.execute("UPDATE users SET password = ? WHERE name = ?",
                                  (self._hasher.hash(password), name))
        return user

    def get(self, name: str) -> User | None:
        row = self._db.conn.execute(
            "SELECT name, role, province, created, disabled FROM users WHERE name = ?",
            (name,)).fetchone()
        return None if row is None else User(row[0], row[1], row[2], row[3], bool(row[4]))

    def all(self) -> list[User]:
        rows = self._db.conn.execute(
            "SELECT name, role, province, created, disabled FROM users ORDER BY name")
        return [User(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError("bad_name", f"user name {name!r}: 2-32 of lowercase letters, digits, "
                                    "'.', '_', '-'")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError("bad_password", f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} "
                                        "characters")
    return password
