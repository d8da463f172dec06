"""People: argon2 accounts, sign-in sessions with expiry, API tokens, append-only audit, limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from tiepdan.controller.cli.main import main as cli_main
from tiepdan.controller.config import ConsoleSection
from tiepdan.controller.people.audit import AuditLog
from tiepdan.controller.people.login_limit import LoginLimit
from tiepdan.controller.people.logins import Logins
from tiepdan.controller.people.people import LoginRefused, People
from tiepdan.controller.people.roles import ROLES, may
from tiepdan.controller.people.users import UserError, Users
from tiepdan.controller.store import Database

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def db(database: Path | str) -> Iterator[Database]:
    opened = Database(database)
    yield opened
    opened.close()


def test_password_is_stored_as_argon2_and_checked(db: Database) -> None:
    users = Users(db, FAST)
    users.add("lan", "archivist", "mat-khau-dai-du")
    stored = db.conn.execute("SELECT password FROM users WHERE name='lan'").fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert "mat-khau" not in stored
    user = users.verify("lan", "mat-khau-dai-du")
    assert user is not None and user.role == "archivist"
    assert users.verify("lan", "mat-khau-sai-roi") is None
    assert users.verify("nobody", "mat-khau-dai-du") is None


@pytest.mark.parametrize(("name", "role", "password", "province", "code"), [
    ("Lan", "admin", "x" * 12, "", "bad_name"),
    ("lan\n", "admin", "x" * 12, "", "bad_name"),
    ("lan", "root", "x" * 12, "", "bad_role"),
    ("lan", "admin", "short", "", "bad_password"),
    ("lan", "operator", "x" * 12, "", "bad_province"),
    ("lan", "operator", "x" * 12, "Nghe An", "bad_province"),
])
def test_bad_user_input_is_refused_clearly(db: Database, name: str, role: str, password: str,
                                           province: str, code: str) -> None:
    with pytest.raises(UserError) as caught:
        Users(db, FAST).add(name, role, password, province)
    assert caught.value.code == code
    assert Users(db, FAST).all() == []


def test_duplicate_user_is_refused(db: Database) -> None:
    users = Users(db, FAST)
    users.add("lan", "leader", "x" * 12)
    with pytest.raises(UserError, match="already exists"):
        users.add("lan", "admin", "y" * 12)
    user = users.get("lan")
    assert user is not None and user.role == "leader"


def test_disabled_user_cannot_sign_in(db: Database) -> None:
    users = Users(db, FAST)
    users.add("lan", "leader", "x" * 12)
    users.set_disabled("lan", True)
    assert users.verify("lan", "x" * 12) is None


def test_audit_log_is_append_only(db: Database) -> None:
    audit = AuditLog(db)
    audit.record("lan", "archive.export", "s1/box-1", out="x.mp4")
    with pytest.raises(db.conn.IntegrityError, match="append-only"):
        db.conn.execute("UPDATE audit SET \"user\"='someone else'")
    with pytest.raises(db.conn.IntegrityError, match="append-only"):
        db.conn.execute("DELETE FROM audit")
    [entry] = audit.recent()
    assert (entry.user, entry.action, entry.target) == ("lan", "archive.export", "s1/box-1")
    assert entry.detail == {"out": "x.mp4"}


def test_login_session_expires_when_idle(db: Database) -> None:
    logins = Logins(db, idle=60, lifetime=3600)
    cookie, login = logins.start("lan")
    assert logins.resume(cookie) == login
    stored = db.conn.execute("SELECT digest FROM logins").fetchone()[0]
    assert cookie not in stored  # only a digest is kept
    db.conn.execute("UPDATE logins SET seen = ?", (time.time() - 61,))
    assert logins.resume(cookie) is None
    assert db.conn.execute("SELECT count(*) FROM logins").fetchone()[0] == 0


def test_login_session_expires_after_its_lifetime(db: Database) -> None:
    logins = Logins(db, idle=60, lifetime=3600)
    cookie, _ = logins.start("lan")
    db.conn.execute("UPDATE logins SET created = ?", (time.time() - 3601,))
    assert logins.resume(cookie) is None


def test_login_limit_per_account_and_per_address() -> None:
    limit = LoginLimit(failures=3, window=60)
    for _ in range(3):
        assert limit.retry_after("lan", "10.0.0.1") == 0
        limit.failed("lan", "10.0.0.1")
    assert limit.retry_after("lan", "10.0.0.2") > 0  # same account, another address
    assert limit.retry_after("minh", "10.0.0.1") > 0  # same address, another account
    assert limit.retry_after("minh", "10.0.0.3") == 0


async def test_people_login_is_throttled_after_failures(db: Database) -> None:
    people = People(db, ConsoleSection(login_failures=2, login_window=60), "admin-secret")
    people.users = Users(db, FAST)
    people.users.add("lan", "leader", "x" * 12)
    for _ in range(2):
        with pytest.raises(LoginRefused) as caught:
            await people.login("lan", "wrong-password", "10.0.0.1")
        assert caught.value.retry_after == 0
    with pytest.raises(LoginRefused) as caught:
        await people.login("lan", "x" * 12, "10.0.0.1")  # right, but throttled
    assert caught.value.retry_after > 0
    assert people.logins.prune() == 0
    assert db.conn.execute("SELECT count(*) FROM logins").fetchone()[0] == 0


def test_bearer_tokens_resolve_people_and_the_admin_token(db: Database) -> None:
    people = People(db, ConsoleSection(), "admin-secret")
    people.users = Users(db, FAST)
    people.users.add("minh", "operator", "x" * 12, "nghe-an")
    token, record = people.tokens.issue("minh", "laptop")
    caller = people.from_bearer(token)
    assert caller is not None and (caller.user, caller.role, caller.via) == \
        ("minh", "operator", "token")
    assert caller.sees_province("nghe-an") and not caller.sees_province("ha-tinh")
    admin = people.from_bearer("admin-secret")
    assert admin is not None and admin.role == "admin"
    assert people.from_bearer("tdu_forged") is None
    assert people.tokens.revoke("minh", record.id)
    assert people.from_bearer(token) is None


def test_roles_limits() -> None:
    assert set(ROLES) == {"admin", "operator", "technician", "archivist", "leader"}
    assert may("archivist", "archive.export") and not may("leader", "archive.export")
    assert not may("technician", "updates.manage") and may("admin", "updates.manage")
    assert may("technician", "provisioning.manage") and not may("operator", "people.manage")
    assert not may("admin", "no.such.action")


def test_cli_adds_the_first_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  database: Path | str) -> None:
    config = tmp_path / "controller.toml"
    url = database if isinstance(database, str) else ""
    config.write_text(f'[controller]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[database]\nurl = "{url}"\n')
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("mat-khau-quan-tri\n"))
    assert cli_main(["--config", str(config), "user", "add", "quantri", "--role", "admin",
                     "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("short\n"))
    assert cli_main(["--config", str(config), "user", "add", "other", "--role", "admin",
                     "--password-stdin"]) == 1
    data = Database(database if url else tmp_path / "data" / "controller.db")
    user = Users(data).verify("quantri", "mat-khau-quan-tri")
    assert user is not None and user.role == "admin"
    assert [e.action for e in AuditLog(data).recent()] == ["user.add"]
