"""The append-only audit log: who changed what, and who exported what, when.

SQLite triggers refuse UPDATE and DELETE on the table, so not even a bug in the controller can
rewrite history through this connection.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from tiepdan.controller.store import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    n: int
    at: float
    user: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, user: str, action: str, target: str, **detail: Any) -> None:
        self._db.conn.execute(
            'INSERT INTO audit (at, "user", action, target, detail) VALUES (?, ?, ?, ?, ?)',
            (time.time(), user, action, target, json.dumps(detail, sort_keys=True, default=str)))
        log.info("audit user=%s action=%s target=%s", user, action, target)

    def recent(self, limit: int = 200, user: str | None = None) -> list[AuditEntry]:
        query = 'SELECT n, at, "user", action, target, detail FROM audit'
        args: list[Any] = []
        if user:
            query += ' WHERE "user" = ?'
            args.append(user)
        rows = self._db.conn.execute(query + " ORDER BY n DESC LIMIT ?", (*args, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
