"""The controller's own alerting, for sites without Prometheus.

Every `interval` the rules (`rules.py`) are evaluated over the same figures `/metrics` serves.
A series whose condition holds is pending until it has held for the rule's `for`, then fires:
one row in `alerts` (one active row per rule and label set: the database deduplicates), one
`firing` notice to the webhook; when it stops holding the row is resolved and a `resolved`
notice follows. Notices are delivered from the table, so a webhook that is down loses nothing:
each round retries what is unsent, oldest first. Pending state is in memory (as Prometheus
keeps it); active alerts survive a restart.

The webhook receives Alertmanager's webhook JSON (version 4), one alert per POST, so existing
receivers (chat bridges, SMS gateways) take it as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.core import Metric

from tiepdan.controller.alerts.rules import RULES, Rule
from tiepdan.controller.config import AlertsSection
from tiepdan.controller.store import Database
from tiepdan.errors import Unavailable

log = logging.getLogger(__name__)

# Its table (alerts) is created by controller/migrations/controller_db.py (version 3).

Key = tuple[str, tuple[tuple[str, str], ...]]


def _iso(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Alerts:
    def __init__(self, db: Database, config: AlertsSection,
                 collect: Callable[[], Iterable[Metric]], controller_id: str,
                 gather: Callable[[], Awaitable[list[Metric]]] | None = None,
                 rules: tuple[Rule, ...] = RULES) -> None:
        self._db = db
        self.config = config
        self._collect = collect
        self._gather = gather  # off-loop collection for the running controller
        self._controller = controller_id
        self._rules = rules
        self._pending: dict[Key, float] = {}

    # -- evaluation ------------------------------------------------------------------------------

    def _holding(self, now: float, families: Iterable[Metric]
                 ) -> Iterator[tuple[Rule, dict[str, str]]]:
        by_metric: dict[str, list[Rule]] = {}
        for rule in self._rules:
            by_metric.setdefault(rule.metric, []).append(rule)
        for family in families:
            for sample in family.samples:
                for rule in by_metric.get(sample.name, ()):
                    if rule.holds(sample.labels, sample.value, now):
                        yield rule, dict(sample.labels)

    def evaluate(self, now: float | None = None,
                 families: Iterable[Metric] | None = None) -> tuple[int, int]:
        """One round over `families` (default: collected now); returns (alerts that started
        firing, alerts resolved)."""
        now = time.time() if now is None else now
        holding: dict[Key, tuple[Rule, dict[str, str]]] = {}
        for rule, labels in self._holding(now, self._collect() if families is None
                                          else families):
            holding[(rule.name, tuple(sorted(labels.items())))] = (rule, labels)
        self._pending = {key: self._pending.get(key, now) for key in holding}
        active = {(row["rule"], tuple(sorted(json.loads(row["labels"]).items()))): row["n"]
                  for row in self._db.conn.execute(
                      "SELECT n, rule, labels FROM alerts WHERE resolved IS NULL")}
        fired = resolved = 0
        with self._db.transaction() as conn:
            for key, (rule, labels) in holding.items():
                if key in active or now - self._pending[key] < rule.for_s:
                    continue
                summary = rule.summary.format_map(_Missing(labels))
                conn.execute(
                    "INSERT INTO alerts (rule, labels, severity, summary, started) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (rule.name, json.dumps(labels, sort_keys=True), rule.severity, summary,
                     self._pending[key]))
                fired += 1
                log.warning("alert_firing rule=%s severity=%s labels=%s", rule.name,
                            rule.severity, json.dumps(labels, sort_keys=True))
            for key, n in active.items():
                if key not in holding:
                    conn.execute("UPDATE alerts SET resolved = ? WHERE n = ?", (now, n))
                    resolved += 1
                    log.info("alert_resolved rule=%s labels=%s", key[0], dict(key[1]))
        return fired, resolved

    # -- notices ---------------------------------------------------------------------------------

    def _unsent(self) -> list[dict[str, Any]]:
        rows = self._db.conn.execute(
            "SELECT * FROM alerts WHERE sent_firing IS NULL OR "
            "(resolved IS NOT NULL AND sent_resolved IS NULL) ORDER BY n LIMIT 100")
        return [dict(r) for r in rows]

    def notice(self, row: dict[str, Any]) -> dict[str, Any]:
        """Alertmanager's webhook document for one alert (firing until its firing notice went
        out, then resolved once it is)."""
        status = "firing" if row["sent_firing"] is None or row["resolved"] is None \
            else "resolved"
        labels = {"alertname": row["rule"], "severity": row["severity"],
                  **json.loads(row["labels"])}
        alert = {"status": status, "labels": labels,
                 "annotations": {"summary": row["summary"]},
                 "startsAt": _iso(row["started"]),
                 "endsAt": _iso(row["resolved"] if status == "resolved" else None),
                 "fingerprint": f"{row['n']}"}
        return {"version": "4", "status": status, "receiver": "tiepdan",
                "groupLabels": {"alertname": row["rule"]}, "commonLabels": labels,
                "commonAnnotations": alert["annotations"],
                "externalURL": f"tiepdan-controller:{self._controller}", "alerts": [alert]}

    async def deliver(self, http: aiohttp.ClientSession) -> int:
        """Send what is unsent, oldest first; stop at the first failure (retried next round)."""
        if not self.config.webhook_url:
            return 0
        sent = 0
        for row in self._unsent():
            document = self.notice(row)
            column = "sent_firing" if document["status"] == "firing" else "sent_resolved"
            try:
                async with http.post(self.config.webhook_url, json=document) as response:
                    if response.status >= 300:
                        raise Unavailable(f"webhook answered HTTP {response.status} "
                                          f"{response.reason or ''}".strip())
            except (Unavailable, aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
                self._db.conn.execute(
                    "UPDATE alerts SET attempts = attempts + 1, last_error = ? WHERE n = ?",
                    (error[:300], row["n"]))
                log.warning("alert_webhook_failed rule=%s alert=%d error=%s", row["rule"],
                            row["n"], error)
                return sent
            self._db.conn.execute(f"UPDATE alerts SET {column} = ?, attempts = attempts + 1 "
                                  "WHERE n = ?", (time.time(), row["n"]))
            log.info("alert_sent rule=%s alert=%d status=%s", row["rule"], row["n"],
                     document["status"])
            sent += 1
            if document["status"] == "firing" and row["resolved"] is not None:
                return sent + await self.deliver(http)  # its resolve notice follows at once
        return sent

    # -- queries and the loop --------------------------------------------------------------------

    def list(self, active_only: bool = True, limit: int = 100) -> list[dict[str, Any]]:
        query = "SELECT * FROM alerts" + (" WHERE resolved IS NULL" if active_only else "")
        rows = self._db.conn.execute(query + " ORDER BY n DESC LIMIT ?", (limit,))
        out = []
        for row in rows:
            item = dict(row)
            item["labels"] = json.loads(item["labels"])
            item["state"] = "firing" if item["resolved"] is None else "resolved"
            out.append(item)
        return out

    def prune(self, now: float | None = None) -> int:
        """Forget resolved alerts older than `kept_days`."""
        now = time.time() if now is None else now
        # Without a webhook nothing is ever sent; with one, a notice not yet sent is kept.
        unsent_ok = "" if self.config.webhook_url else " OR TRUE"
        return int(self._db.conn.execute(
            "DELETE FROM alerts WHERE resolved IS NOT NULL AND resolved < ? AND "
            f"(sent_resolved IS NOT NULL{unsent_ok})",
            (now - self.config.kept_days * 86400,)).rowcount)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout)
        rounds = 0
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    families = await self._gather() if self._gather is not None else None
                    self.evaluate(families=families)
                    await self.deliver(http)
                    rounds += 1
                    if rounds % 1000 == 1:
                        self.prune()
                except Exception:
                    log.exception("alerts_round_failed")
                await asyncio.sleep(self.config.interval)


class _Missing(dict[str, str]):
    """Labels for a summary; a label the series lacks shows as `?` rather than failing."""

    def __missing__(self, key: str) -> str:
        return "?"
