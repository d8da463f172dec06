"""`tiepdan-controller user ...`: people of the console and the API, made on the server itself.

These write the controller's database directly (SQLite WAL lets them run beside the controller),
because the first admin has to exist before anyone can sign in to make them through the web.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.people.audit import AuditLog
from tiepdan.controller.people.logins import Logins
from tiepdan.controller.people.roles import ROLES
from tiepdan.controller.people.tokens import ApiTokens
from tiepdan.controller.people.users import UserError, Users
from tiepdan.controller.store import Database

ACTOR = "cli"


def add_user_parser(sub: Any) -> None:
    u = sub.add_parser("user", help="people: add, list, password, disable, API tokens")
    us = u.add_subparsers(dest="user_command", required=True)
    a = us.add_parser("add", help="add a person (the first admin: --role admin)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--province", default="", help="an operator's province code")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input instead of asking")
    us.add_parser("list", help="everyone, with role and province")
    p = us.add_parser("password", help="set a new password (signs them out everywhere)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    d = us.add_parser("disable", help="stop a person signing in (signs them out everywhere)")
    d.add_argument("name")
    t = us.add_parser("token", help="a new API token for the CLI (TIEPDAN_TOKEN) or WHIP")
    t.add_argument("name")
    t.add_argument("--label", default="")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("mismatch", "the two passwords differ")
    return first


def user_command(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    db = Database(config.controller_db)
    try:
        users, audit = Users(db), AuditLog(db)
        logins = Logins(db, config.console.session_idle, config.console.session_lifetime)
        command = args.user_command
        if command == "add":
            user = users.add(args.name, args.role, _password(args), args.province)
            audit.record(ACTOR, "user.add", user.name, role=user.role, province=user.province)
            console.print(f"user {user.name} added with role {user.role}")
        elif command == "list":
            table = Table("name", "role", "province", "created", "disabled")
            for user in users.all():
                created = dt.datetime.fromtimestamp(user.created).isoformat(timespec="minutes")
                table.add_row(user.name, user.role, user.province, created,
                              "yes" if user.disabled else "")
            console.print(table)
        elif command == "password":
            users.set_password(args.name, _password(args))
            logins.end_all(args.name)
            audit.record(ACTOR, "user.password", args.name)
            console.print(f"password of {args.name} changed")
        elif command == "disable":
            users.set_disabled(args.name, True)
            logins.end_all(args.name)
            audit.record(ACTOR, "user.disable", args.name)
            console.print(f"{args.name} disabled")
        elif command == "token":
            if users.get(args.name) is None:
                raise UserError("not_found", f"no user {args.name!r}")
            token, record = ApiTokens(db).issue(args.name, args.label)
            audit.record(ACTOR, "token.issue", args.name, token=record.id, label=record.label)
            console.print(f"API token {record.id} for {args.name} (shown once):")
            console.print(token, soft_wrap=True, highlight=False)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    finally:
        db.close()
    return 0
