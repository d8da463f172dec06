"""Update campaigns: which boxes get which bundle, in waves, and when to stop.

A campaign is a state machine kept in SQLite, so a controller restart resumes every campaign
where it was:

    running -> completed                    every wave done
    running <-> paused                      by an admin: nothing new is notified
    running -> halted -> running            a wave crossed its failure threshold, or an admin
                                            aborted: notifications not yet acted on are
                                            withdrawn, an alert is logged; resume re-notifies

A halt never cancels silently: it is recorded with its reason in the campaign and the audit log,
and boxes already installing finish (an update is never interrupted half-way).

Each box of a campaign moves pending -> notified -> queued -> in_progress -> succeeded | failed
| rejected | rolled_back (the AWS IoT Jobs vocabulary, as reported by the box) or withdrawn.
The engine notifies through a retained `jobs/notify` per box, at most `notify_rate` per second,
with at most `max_concurrent` boxes downloading at once, and a random download delay per box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from tiepdan.controller.fleet.registry import Device
from tiepdan.controller.store import Database
from tiepdan.errors import Conflict
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound

if TYPE_CHECKING:
    from tiepdan.controller.fleet.registry import Registry
    from tiepdan.firmware.core.mqtt import MqttLink

log = logging.getLogger(__name__)

# Its tables are created and changed only by controller/migrations/controller_db.py.

ACTIVE = ("notified", "queued", "in_progress")
FAILURES = ("failed", "rejected", "rolled_back")
FINISHED = ("succeeded", *FAILURES)
# Steps after which a box no longer loads the repository server.
DOWNLOADED = ("downloaded", "installing", "restarting", "health_check")
# Steps before which a notification may still be withdrawn without interrupting anything.
WITHDRAWABLE = ("", "waiting", "downloading", "downloaded")

Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]


class Wave(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Cumulative share of the campaign's boxes; the threshold counts once `min_finished`
    boxes of the wave have finished."""

    percent: Percent
    max_failure_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 10.0
    min_finished: Annotated[int, msgspec.Meta(ge=1)] = 1


class Selector(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Which boxes: every given criterion must hold; none given means all boxes."""

    province: str | None = None
    communes: list[str] | None = None
    tag: str | None = None
    version: str | None = None
    devices: list[str] | None = None


class CampaignSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    target: protocol.TargetPath
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    selector: Selector = Selector()
    waves: Annotated[list[Wave], msgspec.Meta(min_length=1, max_length=20)] = \
        msgspec.field(default_factory=lambda: [Wave(100.0)])
    max_concurrent: Annotated[int, msgspec.Meta(ge=1)] = 50
    notify_rate: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    download_jitter: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0
    window: protocol.Window | None = None
    wave_timeout: Annotated[float, msgspec.Meta(gt=0)] = 6 * 3600.0
    download_timeout: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    name: Annotated[str, msgspec.Meta(max_length=120)] = ""


class CampaignError(Conflict, ValueError):
    pass


@dataclass
class _Bucket:
    """Token bucket for the notification rate cap (shared by all campaigns)."""

    rate: float
    tokens: float = 0.0
    at: float = 0.0

    def take(self, wanted: int, rate: float) -> int:
        now = time.monotonic()
        self.rate = rate
        self.tokens = min(max(rate, 1.0), self.tokens + (now - self.at) * rate)
        self.at = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


def select(devices: list[Device], selector: Selector) -> list[str]:
    chosen = []
    for d in devices:
        if selector.province is not None and d.province != selector.province:
            continue
        if selector.communes is not None and d.commune not in selector.communes:
            continue
        if selector.version is not None and d.firmware != selector.version:
            continue
        if selector.devices is not None and d.id not in selector.devices:
            continue
        if selector.tag is not None and selector.tag not in _tags(d):
            continue
        chosen.append(d.id)
    return chosen


def _tags(d: Device) -> list[str]:
    for doc in (d.reported, d.desired):
        tags = ((doc or {}).get("config") or {}).get("tags")
        if isinstance(tags, list):
            return [str(t) for t in tags]
    return []


def assign_waves(devices: list[str], waves: list[Wave]) -> list[int]:
    """Wave number per device (in a shuffled order); every wave gets at least one box."""
    n = len(devices)
    bounds, previous = [], 0
    for k, wave in enumerate(waves):
        bound = n if k == len(waves) - 1 else min(n, max(previous + 1,
                                                        math.ceil(wave.percent / 100 * n)))
        bounds.append(bound)
        previous = bound
    result, k = [], 0
    for i in range(n):
        while i >= bounds[k]:
            k += 1
        result.append(k)
    return result


class Campaigns:
    """The campaign engine; job updates from boxes arrive through `on_update`. `public_url`
    is asked each time: the box listener's address is known only once it listens."""

    def __init__(self, db: Database, registry: Registry, link: MqttLink,
                 public_url: Callable[[], str], tick: float = 1.0) -> None:
        self._db = db
        self._registry = registry
        self._link = link
        self._public_url = public_url
        self.tick = tick
        self._bucket = _Bucket(rate=1.0, at=time.monotonic())
        self._wake = asyncio.Event()

    # -- admin actions ---------------------------------------------------------------------------


    @property
    def public_url(self) -> str:
        """Where boxes fetch the repository (known once the box listener has started)."""
        return self._public_url().rstrip("/")
    def create(self, spec: CampaignSpec, actor: str, approved_by: str = "") -> str:
        devices = select(self._registry.devices(), spec.selector)
        if not devices:
            raise CampaignError("no box matches the selection")
        if sorted(w.percent for w in spec.waves) != [w.percent for w in spec.waves]:
            raise CampaignError("wave percentages must grow")
        campaign = f"c{uuid.uuid4().hex[:11]}"
        rng = random.Random(campaign)
        devices = sorted(devices)
        rng.shuffle(devices)
        waves = assign_waves(devices, list(spec.waves))
        now = time.time()
        with self._db.transaction() as conn:
            conn.execute("INSERT INTO ota_campaigns (id, state, spec, wave, wave_started, created, "
                         "updated) VALUES (?, 'running', ?, 0, ?, ?, ?)",
                         (campaign, msgspec.json.encode(spec).decode(), now, now, now))
            conn.executemany("INSERT INTO ota_boxes (campaign, device, wave, updated) "
                             "VALUES (?, ?, ?, ?)",
                             [(campaign, d, w, now) for d, w in zip(devices, waves, strict=True)])
            if approved_by:
                self._audit(conn, approved_by, "approved", campaign, spec.name or spec.target)
            self._audit(conn, actor, "started", campaign,
                        f"{spec.target} {spec.version} to {len(devices)} boxes in "
                        f"{len(spec.waves)} waves")
        log.info("ota_campaign_started campaign=%s target=%s boxes=%d actor=%s", campaign,
                 spec.target, len(devices), actor)
        self._wake.set()
        return campaign

    def pause(self, campaign: str, actor: str, reason: str = "") -> None:
        self._transition(campaign, actor, "paused", ("running",), reason or "paused by admin")

    def resume(self, campaign: str, actor: str, reason: str = "") -> None:
        with self._db.transaction() as conn:
            state = self._state(conn, campaign)
            if state not in ("paused", "halted"):
                raise CampaignError(f"campaign {campaign} is {state}, not paused or halted")
            conn.execute("UPDATE ota_campaigns SET state='running', reason='', updated=? "
                         "WHERE id=?", (time.time(), campaign))
            conn.execute("UPDATE ota_boxes SET state='pending', step='', progress=NULL "
                         "WHERE campaign=? AND state='withdrawn'", (campaign,))
            self._audit(conn, actor, "resumed", campaign, reason)
        log.info("ota_campaign_resumed campaign=%s actor=%s", campaign, actor)
        self._wake.set()

    def abort(self, campaign: str, actor: str, reason: str = "") -> None:
        """Halt: withdraw what boxes have not acted on, alert; resumable, never a silent cancel."""
        self._halt(campaign, actor, f"aborted by {actor}" + (f": {reason}" if reason else ""),
                   ("running", "paused"))

    def _transition(self, campaign: str, actor: str, state: str, allowed: tuple[str, ...],
                    reason: str) -> None:
        with self._db.transaction() as conn:
            current = self._state(conn, campaign)
            if current not in allowed:
                raise CampaignError(f"campaign {campaign} is {current}")
            conn.execute("UPDATE ota_campaigns SET state=?, reason=?, updated=? WHERE id=?",
                         (state, reason, time.time(), campaign))
            self._audit(conn, actor, state, campaign, reason)
        log.info("ota_campaign_%s campaign=%s actor=%s reason=%s", state, campaign, actor, reason)

    def _halt(self, campaign: str, actor: str, reason: str, allowed: tuple[str, ...]) -> None:
        with self._db.transaction() as conn:
            current = self._state(conn, campaign)
            if current not in allowed:
                raise CampaignError(f"campaign {campaign} is {current}")
            marks = ",".join("?" * len(WITHDRAWABLE))
            withdrawn = [r["device"] for r in conn.execute(
                f"SELECT device FROM ota_boxes WHERE campaign=? AND state IN "
                f"('notified','queued','in_progress') AND step IN ({marks})",
                (campaign, *WITHDRAWABLE))]
            conn.executemany("UPDATE ota_boxes SET state='withdrawn', updated=? "
                             "WHERE campaign=? AND device=?",
                             [(time.time(), campaign, d) for d in withdrawn])
            conn.execute("UPDATE ota_campaigns SET state='halted', reason=?, updated=? "
                         "WHERE id=?", (reason, time.time(), campaign))
            self._audit(conn, actor, "halted", campaign,
                        f"{reason}; withdrew {len(withdrawn)} notification(s)")
        for device in withdrawn:
            self._publish_notify(device, None)
        # The alert: an error in the log (and journald, and whatever watches it) and the audit.
        log.error("ota_campaign_halted campaign=%s reason=%s withdrawn=%d", campaign, reason,
                  len(withdrawn))

    # -- queries ---------------------------------------------------------------------------------

    def all(self) -> list[dict[str, Any]]:
        rows = self._db.conn.execute("SELECT id FROM ota_campaigns ORDER BY created DESC")
        return [self.summary(r["id"]) for r in rows.fetchall()]

    def summary(self, campaign: str, boxes: bool = False) -> dict[str, Any]:
        row = self._db.conn.execute("SELECT * FROM ota_campaigns WHERE id=?",
                                    (campaign,)).fetchone()
        if row is None:
            raise KeyError(campaign)
        spec = msgspec.json.decode(row["spec"], type=CampaignSpec)
        waves: list[dict[str, Any]] = [
            {"wave": k, "percent": w.percent, "max_failure_percent": w.max_failure_percent,
             "min_finished": w.min_finished, "boxes": 0, "states": {}}
            for k, w in enumerate(spec.waves)]
        for r in self._db.conn.execute(
                "SELECT wave, state, COUNT(*) AS n FROM ota_boxes WHERE campaign=? "
                "GROUP BY wave, state", (campaign,)):
            waves[r["wave"]]["boxes"] += r["n"]
            waves[r["wave"]]["states"][r["state"]] = r["n"]
        result: dict[str, Any] = {
            "id": campaign, "state": row["state"], "reason": row["reason"],
            "wave": row["wave"], "created": row["created"], "updated": row["updated"],
            "spec": msgspec.to_builtins(spec), "waves": waves,
        }
        if boxes:
            result["boxes"] = [dict(r) for r in self._db.conn.execute(
                "SELECT device, wave, state, step, progress, reason, running, notified, updated "
                "FROM ota_boxes WHERE campaign=? ORDER BY wave, device", (campaign,))]
        return result

    def history(self, device: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = "SELECT * FROM ota_history"
        params: tuple[Any, ...] = ()
        if device:
            query, params = query + " WHERE device=?", (device,)
        return [dict(r) for r in self._db.conn.execute(f"{query} ORDER BY n DESC LIMIT ?",
                                                       (*params, limit))]

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.conn.execute(
            "SELECT * FROM ota_audit ORDER BY n DESC LIMIT ?", (limit,))]

    # -- box updates -----------------------------------------------------------------------------

    def on_update(self, topic: protocol.Topic, message: Inbound) -> None:
        if len(topic.rest) != 2 or topic.rest[1] != "update":
            raise protocol.ProtocolError(f"unexpected jobs topic {message.topic[:120]}")
        update = protocol.decode(message.payload, protocol.JobUpdate)
        if update.job != topic.rest[0]:
            raise protocol.ProtocolError(f"update for job {update.job} on {message.topic[:120]}")
        self.apply(topic.device, update)

    def apply(self, device: str, update: protocol.JobUpdate) -> None:
        now = time.time()
        with self._db.transaction() as conn:
            row = conn.execute("SELECT state, step, seq FROM ota_boxes WHERE campaign=? AND "
                               "device=?", (update.job, device)).fetchone()
            if row is None:
                log.warning("ota_update_unknown device=%s job=%s", device, update.job)
                return
            if update.seq <= row["seq"]:
                return  # an older or repeated report (QoS 1 allows both)
            if row["state"] == "withdrawn" and update.status not in protocol.TERMINAL_JOB_STATUSES \
                    and (update.step or "") in WITHDRAWABLE:
                conn.execute("UPDATE ota_boxes SET seq=? WHERE campaign=? AND device=?",
                             (update.seq, update.job, device))
                return
            step = update.step or ""
            conn.execute(
                "UPDATE ota_boxes SET state=?, step=?, progress=?, reason=?, running=?, seq=?, "
                "updated=? WHERE campaign=? AND device=?",
                (update.status, step, update.progress, update.reason or "", update.running,
                 update.seq, now, update.job, device))
            if update.status != row["state"] or step != row["step"]:
                conn.execute("INSERT INTO ota_history (ts, device, campaign, status, step, "
                             "reason, running) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (now, device, update.job, update.status, step,
                              update.reason or "", update.running))
        self._registry.set_extra(device, "update", {
            "campaign": update.job, "status": update.status, "step": step,
            "progress": update.progress, "reason": update.reason})
        if update.status in protocol.TERMINAL_JOB_STATUSES:
            self._publish_notify(device, None)
            log.info("ota_box_done campaign=%s device=%s status=%s reason=%s", update.job,
                     device, update.status, update.reason)
            self._wake.set()

    # -- the engine ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:
                log.exception("ota_engine_failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()

    def step(self) -> None:
        """One pass over running campaigns: thresholds, wave advance, notifications."""
        rows = self._db.conn.execute("SELECT id FROM ota_campaigns WHERE state='running' "
                                     "ORDER BY created").fetchall()
        for row in rows:
            self._step_campaign(row["id"])

    def _step_campaign(self, campaign: str) -> None:
        row = self._db.conn.execute("SELECT * FROM ota_campaigns WHERE id=?",
                                    (campaign,)).fetchone()
        spec = msgspec.json.decode(row["spec"], type=CampaignSpec)
        wave = row["wave"]
        counts = {r["state"]: r["n"] for r in self._db.conn.execute(
            "SELECT state, COUNT(*) AS n FROM ota_boxes WHERE campaign=? AND wave=? "
            "GROUP BY state", (campaign, wave))}
        total = sum(counts.values())
        finished = sum(counts.get(s, 0) for s in FINISHED)
        failures = sum(counts.get(s, 0) for s in FAILURES)
        limit = spec.waves[wave]
        if finished >= limit.min_finished and 100 * failures / finished > \
                limit.max_failure_percent:
            self._halt(campaign, "controller",
                       f"wave {wave} ({limit.percent:g} %): {failures} of {finished} finished "
                       f"boxes failed, above {limit.max_failure_percent:g} %", ("running",))
            return
        timed_out = time.time() - row["wave_started"] > spec.wave_timeout
        if finished == total or (timed_out and not counts.get("pending")):
            if wave + 1 < len(spec.waves):
                with self._db.transaction() as conn:
                    conn.execute("UPDATE ota_campaigns SET wave=?, wave_started=?, updated=? "
                                 "WHERE id=?", (wave + 1, time.time(), time.time(), campaign))
                    self._audit(conn, "controller", "wave_started", campaign,
                                f"wave {wave + 1} ({spec.waves[wave + 1].percent:g} %)"
                                + (" after the wave timeout" if finished < total else ""))
                log.info("ota_wave_started campaign=%s wave=%d", campaign, wave + 1)
                self._wake.set()
                return
            if finished == total:
                everyone = {r["state"]: r["n"] for r in self._db.conn.execute(
                    "SELECT state, COUNT(*) AS n FROM ota_boxes WHERE campaign=? GROUP BY state",
                    (campaign,))}
                self._transition(campaign, "controller", "completed", ("running",),
                                 f"{everyone.get('succeeded', 0)} of {sum(everyone.values())} "
                                 "boxes updated")
                return
        self._notify_some(campaign, spec, wave)

    def _notify_some(self, campaign: str, spec: CampaignSpec, wave: int) -> None:
        since = time.time() - spec.download_timeout
        marks = ",".join("?" * len(DOWNLOADED))
        downloading = self._db.conn.execute(
            f"SELECT COUNT(*) FROM ota_boxes WHERE campaign=? AND state IN "
            f"('notified','queued','in_progress') AND step NOT IN ({marks}) AND notified > ?",
            (campaign, *DOWNLOADED, since)).fetchone()[0]
        room = spec.max_concurrent - downloading
        if room <= 0:
            return
        pending = [r["device"] for r in self._db.conn.execute(
            "SELECT device FROM ota_boxes WHERE campaign=? AND state='pending' AND wave<=? "
            "ORDER BY wave, rowid LIMIT ?", (campaign, wave, room))]
        granted = self._bucket.take(len(pending), spec.notify_rate)
        chosen = pending[:granted]
        now = time.time()
        with self._db.transaction() as conn:
            conn.executemany("UPDATE ota_boxes SET state='notified', step='', notified=?, "
                             "updated=? WHERE campaign=? AND device=?",
                             [(now, now, campaign, d) for d in chosen])
            conn.executemany("INSERT INTO ota_history (ts, device, campaign, status) "
                             "VALUES (?, ?, ?, 'notified')", [(now, d, campaign) for d in chosen])
        for device in chosen:
            self._publish_notify(device, protocol.JobDocument(
                job=campaign, target=spec.target, version=spec.version,
                repository=self.public_url,
                download_delay_s=round(random.uniform(0, spec.download_jitter), 2),
                window=spec.window))
        if chosen:
            log.info("ota_notified campaign=%s wave=%d boxes=%d", campaign, wave, len(chosen))

    # -- plumbing --------------------------------------------------------------------------------

    def _publish_notify(self, device: str, job: protocol.JobDocument | None) -> None:
        payload = protocol.encode(protocol.JobNotify(ts=protocol.now_ms(), job=job)) \
            if job is not None else b""
        self._link.publish(protocol.job_notify_topic(device), payload, qos=1,
                                      retain=True)

    @staticmethod
    def _state(conn: Any, campaign: str) -> str:
        row = conn.execute("SELECT state FROM ota_campaigns WHERE id=?", (campaign,)).fetchone()
        if row is None:
            raise KeyError(campaign)
        return str(row["state"])

    @staticmethod
    def _audit(conn: Any, actor: str, action: str, campaign: str, detail: str) -> None:
        conn.execute("INSERT INTO ota_audit (ts, actor, action, campaign, detail) "
                     "VALUES (?, ?, ?, ?, ?)", (time.time(), actor[:120], action, campaign,
                                                detail[:1000]))


def spec_from_json(data: Any) -> CampaignSpec:
    try:
        return msgspec.convert(data, CampaignSpec)
    except msgspec.ValidationError as exc:
        raise protocol.ProtocolError(f"invalid campaign: {exc}") from None
