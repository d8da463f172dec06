"""Reception sessions: who takes part, in which state, and what happens when that changes.

A session moves scheduled -> inviting -> live -> ended, kept in SQLite with a log of every
point's joins and losses (the legal record needs both). The engine invites the boxes
(`session-invite`), answers their offers through the bridge, follows the bridge's view of each
point (live, lost), re-invites a box that comes back online, expires invitations nobody
answered, and ends the session for all when the host presses End or an admin ends it. Boxes
only follow and report.

Point states: invited (command sent) -> ringing (the box blinks) -> joining (offer answered)
-> live (media through the bridge) -> away (lost; it may rejoin) ...; and the final ones:
left, declined, missed (never answered within `sessions.ring_timeout`), unreachable (the
invitation did not reach the box; retried when it is next online).

`listen(callback(session, old_state, new_state))` reports every session transition (old is
None when a session is created). The archive adds its own final state after `ended`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from tiepdan.controller.config import BridgeSection, SessionsSection
from tiepdan.controller.fleet.commands import CommandClient
from tiepdan.controller.fleet.registry import Registry
from tiepdan.controller.sessions import turn
from tiepdan.controller.sessions.bridge import Bridge, BridgeError, PeerEvent
from tiepdan.controller.store import Database
from tiepdan.errors import BadInput, Conflict, NotFound
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

# Its tables are created and changed only by controller/migrations/controller_db.py.

SessionState = Literal["scheduled", "inviting", "live", "ended", "closed"]
ACTIVE = ("inviting", "live")
# Allowed transitions; the archive extends this with its own final step after "ended".
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "scheduled": ("inviting", "ended"),
    "inviting": ("live", "ended"),
    "live": ("ended",),
    "ended": ("closed",),  # the archive holds every recording whole (controller/closing.py)
    "closed": (),
}
IN_CALL = ("joining", "live", "away")
PENDING = ("invited", "ringing", "unreachable")
LAYOUT_EXPIRY = 10


@dataclass
class Session:
    id: str
    title: str
    host: str
    state: str
    auto_join: bool
    schedule: str | None
    starts_at: float | None
    created: float
    started: float | None
    ended: float | None
    end_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Participant:
    session: str
    device: str
    role: str
    call: str
    state: str
    attempt: int
    invited_at: float | None
    joined_at: float | None
    left_at: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Listener = Callable[[Session, str | None, str], None]


class Sessions:
    """Sessions and their points; fed by `on_call_message`, `on_tele`, `on_device`, `on_peer`
    and `on_layout`, which the composition root connects to the ingest, registry and bridge."""

    def __init__(self, db: Database, config: SessionsSection, registry: Registry,
                 rpc: CommandClient, link: MqttLink, bridge: Bridge[Any],
                 bridge_config: BridgeSection) -> None:
        self._db = db
        self._config = config
        self._bridge_config = bridge_config
        self._registry = registry
        self._rpc = rpc
        self._link = link
        self.bridge = bridge
        self._listeners: list[Listener] = []
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Future[None]] = set()

    def listen(self, callback: Listener) -> None:
        self._listeners.append(callback)

    # -- queries ---------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        row = self._db.conn.execute("SELECT * FROM sessions WHERE id = ?",
                                    (session_id,)).fetchone()
        return None if row is None else _session(row)

    def find(self, state: str | None = None, limit: int = 100) -> list[Session]:
        query, params = "SELECT * FROM sessions", cast(tuple[str, ...], ())
        if state:
            query, params = query + " WHERE state = ?", (state,)
        rows = self._db.conn.execute(query + " ORDER BY created DESC LIMIT ?", (*params, limit))
        return [_session(r) for r in rows]

    def points(self, session_id: str) -> list[Participant]:
        rows = self._db.conn.execute(
            "SELECT * FROM session_points WHERE session = ? ORDER BY role = 'guest', rowid",
            (session_id,))
        return [_participant(r) for r in rows]

    def point(self, session_id: str, device: str) -> Participant | None:
        row = self._db.conn.execute(
            "SELECT * FROM session_points WHERE session = ? AND device = ?",
            (session_id, device)).fetchone()
        return None if row is None else _participant(row)

    def history(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._db.conn.execute(
            "SELECT ts, device, what, detail FROM session_log WHERE session = ? ORDER BY n",
            (session_id,))
        return [dict(r) for r in rows]

    def describe(self, session_id: str) -> dict[str, Any] | None:
        session = self.get(session_id)
        if session is None:
            return None
        media = self.bridge.session(session_id)
        return {**session.to_json(),
                "points": [p.to_json() for p in self.points(session_id)],
                "log": self.history(session_id),
                "layout": None if media is None else protocol.to_builtins(media.layout())}

    # -- opening and ending ----------------------------------------------------------------------

    async def open(self, host: str, invite: list[str], *, title: str = "",
                   at: float | None = None, auto_join: bool = False,
                   schedule: str | None = None) -> Session:
        """Create a session now (inviting) or for later (scheduled, when `at` is ahead)."""
        protocol.check_device_id(host)
        guests: list[str] = [*dict.fromkeys(invite)]
        for device in guests:
            protocol.check_device_id(device)
        if not guests:
            raise BadInput("invite at least one point besides the host")
        if host in guests:
            raise BadInput(f"{host} is the host; do not invite it too")
        unknown = [d for d in [host, *guests] if self._registry.get(d) is None]
        if unknown:
            raise NotFound(f"unknown device(s): {', '.join(unknown)}")
        now = time.time()
        scheduled = at is not None and at > now + 1
        session_id = f"s-{protocol.new_id()[:12]}"
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions (id, title, host, state, auto_join, schedule, starts_at, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, title, host, "scheduled" if scheduled else "inviting",
                 int(auto_join), schedule, at, now))
            for device, role in [(host, "host"), *((g, "guest") for g in guests)]:
                conn.execute(
                    "INSERT INTO session_points (session, device, role, call, state) "
                    "VALUES (?, ?, ?, ?, 'invited')",
                    (session_id, device, role, f"c-{protocol.new_id()[:12]}"))
        self._log(session_id, None, "opened",
                  f"host={host} invite={','.join(guests)} at={at or 'now'}")
        session = self.get(session_id)
        assert session is not None
        log.info("session_opened session=%s host=%s points=%d state=%s", session_id, host,
                 len(guests) + 1, session.state)
        self._notify(session, None, session.state)
        if session.state == "inviting":
            self._start(session)
        return session

    async def end(self, session_id: str, reason: str = "admin") -> Session:
        """End for all: every box is told to leave, the bridge closes the session's media."""
        session = self.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        if session.state not in ("scheduled", *ACTIVE):
            raise Conflict(f"session {session_id} is already {session.state}")
        points = self.points(session_id)
        self._transition(session, "ended", end_reason=reason)
        for point in points:
            if point.state in IN_CALL or point.state in PENDING:
                self._set_point(point, "left", f"session ended ({reason})")
                if session.state != "scheduled":
                    self._spawn(self._tell_leave(point, reason))
        await self.bridge.close_session(session_id)
        ended = self.get(session_id)
        assert ended is not None
        return ended

    async def _tell_leave(self, point: Participant, reason: str) -> None:
        bye = protocol.CallBye(session=point.session, attempt=point.attempt, reason="ended",
                               ts=protocol.now_ms())
        self._send_down(point, bye)
        response = await self._rpc.request(
            point.device, "session-leave", {"session": point.session, "reason": "ended"},
            timeout=self._config.invite_timeout)
        self._log(point.session, point.device, "told_to_leave",
                  "ok" if response.ok else f"{response.error.code if response.error else '?'}")

    def _start(self, session: Session) -> None:
        if session.state == "scheduled":
            self._transition(session, "inviting")
        for point in self.points(session.id):
            if point.state in PENDING:
                self._spawn(self._invite(point))

    async def _invite(self, point: Participant, rejoin: bool = False) -> None:
        session = self.get(point.session)
        if session is None or session.state not in ACTIVE:
            return
        host = self._registry.get(session.host)
        invite = protocol.SessionInvite(
            session=session.id, call=point.call, role=point.role,  # type: ignore[arg-type]
            host=session.host, host_name=(host.name if host and host.name else session.host),
            expires=protocol.now_ms() + int(self._config.ring_timeout * 1000),
            title=session.title[:200], auto_join=session.auto_join or rejoin,
            attempt=point.attempt, plan=self.bridge.plan,
            ice_servers=turn.ice_servers(self._bridge_config, session.id,
                                         point.device))
        if point.state in PENDING:
            self._set_point(point, "invited", "")
        response = await self._rpc.request(
            point.device, "session-invite", protocol.to_builtins(invite),
            timeout=self._config.invite_timeout)
        current = self.point(point.session, point.device)
        if current is None or current.state not in (*PENDING, "away"):
            return
        if response.ok:
            box_state = (response.result or {}).get("state", "invited")
            if current.state in PENDING:
                self._set_point(current, "ringing" if box_state == "invited" else "joining", "")
        else:
            code = response.error.code if response.error else "internal"
            message = response.error.message if response.error else ""
            log.warning("session_invite_failed session=%s device=%s code=%s message=%s",
                        point.session, point.device, code, message)
            if current.state in PENDING:
                self._set_point(current, "unreachable", f"{code}: {message}"[:200])

    # -- the timer loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Start due sessions, expire unanswered invitations and never-started sessions."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.tick()
            except Exception:
                log.exception("sessions_tick_failed")

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for session in self.find("scheduled", limit=1000):
            if session.starts_at is not None and session.starts_at <= now:
                log.info("session_due session=%s", session.id)
                self._start(session)
        for session in self.find("inviting", limit=1000):
            if now - (session.starts_at or session.created) > self._config.start_timeout:
                await self.end(session.id, "not_started")
        for session in [*self.find("inviting", limit=1000), *self.find("live", limit=1000)]:
            for point in self.points(session.id):
                if point.state in ("invited", "ringing") and point.invited_at is not None \
                        and now - point.invited_at > self._config.ring_timeout:
                    self._set_point(point, "missed", "no answer within ring_timeout")

    # -- box -> controller -----------------------------------------------------------------------

    def on_call_message(self, topic: protocol.Topic, message: Inbound) -> None:
        if len(topic.rest) != 2 or topic.rest[1] != "up":
            raise protocol.ProtocolError(f"not a call/<call>/up topic: {message.topic[:120]}")
        up = protocol.decode_call_up(message.payload)
        self._spawn(self._handle_up(topic.device, topic.rest[0], up))

    async def _handle_up(self, device: str, call: str, up: protocol.CallUp) -> None:
        async with self._locks[device]:
            row = self._db.conn.execute("SELECT * FROM session_points WHERE call = ?",
                                        (call,)).fetchone()
            point = None if row is None else _participant(row)
            if point is None or point.device != device or point.session != up.session:
                log.warning("call_unknown device=%s call=%s session=%s type=%s", device, call,
                            up.session, type(up).__name__)
                if isinstance(up, protocol.CallOffer):
                    self._refuse(device, call, up, "not_found",
                                 f"no call {call} of {device} in session {up.session}")
                return
            if isinstance(up, protocol.CallOffer) and up.leg not in ("main", "publish"):
                await self._leg_offer(point, up)
            elif isinstance(up, protocol.CallOffer):
                await self._offer(point, up)
            elif isinstance(up, protocol.CallAnswer):
                await self._leg_answer(point, up)
            elif isinstance(up, protocol.CallBye):
                await self._bye(point, up)
            elif isinstance(up, protocol.CallDecline):
                if point.state in PENDING:
                    self._set_point(point, "declined", "declined at the box")
            else:
                self._registry.set_extra(device, "call", {
                    "session": up.session, "state": up.state, "muted": up.muted,
                    "error": up.error, "ts": up.ts})

    async def _offer(self, point: Participant, offer: protocol.CallOffer) -> None:
        session = self.get(point.session)
        assert session is not None
        if session.state not in ACTIVE:
            code: protocol.ErrorCode = "expired" if session.state == "ended" else "unavailable"
            self._refuse_point(point, offer, code, f"session {session.id} is {session.state}")
            return
        if point.state in ("left", "declined"):
            self._refuse_point(point, offer, "forbidden", f"{point.device} has {point.state}")
            return
        if offer.attempt < point.attempt:
            self._refuse_point(point, offer, "conflict",
                               f"stale offer: attempt {offer.attempt} < {point.attempt}")
            return
        if offer.attempt == point.attempt and point.state in IN_CALL:
            answer = self._db.conn.execute(
                "SELECT answer FROM session_points WHERE call = ?", (point.call,)).fetchone()[0]
            if answer:
                log.info("call_offer_duplicate session=%s device=%s attempt=%d", point.session,
                         point.device, offer.attempt)
                self._send_down(point, protocol.CallAnswer(
                    session=point.session, attempt=offer.attempt, sdp=answer,
                    ts=protocol.now_ms(), leg=offer.leg))
                return
        elsewhere = self._db.conn.execute(
            "SELECT p.session FROM session_points p JOIN sessions s ON s.id = p.session "
            "WHERE p.device = ? AND p.session != ? AND p.state IN ('joining', 'live', 'away') "
            "AND s.state IN ('inviting', 'live')", (point.device, point.session)).fetchone()
        if elsewhere is not None:
            self._refuse_point(point, offer, "conflict",
                               f"{point.device} is already in session {elsewhere[0]}")
            return
        answer = await self._bridge_join(point, offer)
        if answer is None:
            return
        rejoin = point.attempt > 0
        with self._db.transaction() as conn:
            conn.execute("UPDATE session_points SET attempt = ?, answer = ? WHERE call = ?",
                         (offer.attempt, answer, point.call))
        point.attempt = offer.attempt
        self._set_point(point, "joining", "rejoin" if rejoin else "")
        self._send_down(point, protocol.CallAnswer(session=point.session, attempt=offer.attempt,
                                                   sdp=answer, ts=protocol.now_ms(),
                                                   leg=offer.leg))
        media = self.bridge.session(point.session)
        if media is not None:
            self._send_down(point, media.layout(), expiry=LAYOUT_EXPIRY)

    async def _bridge_join(self, point: Participant, offer: protocol.CallOffer) -> str | None:
        """The bridge's answer to one leg's offer; None when it refused (the point is told)."""
        registered = self._registry.get(point.device)
        name = registered.name if registered and registered.name else point.device
        try:
            return await self.bridge.join(point.session, point.device, name,
                                          point.role, offer.attempt,  # type: ignore[arg-type]
                                          offer.sdp, offer.leg)
        except BridgeError as exc:
            self._refuse_point(point, offer, exc.code, str(exc))
            return None

    async def _leg_offer(self, point: Participant, offer: protocol.CallOffer) -> None:
        """A further leg of the attempt the point's "publish" offer started (plan "split")."""
        if offer.attempt != point.attempt or point.state not in IN_CALL:
            self._refuse_point(point, offer, "conflict",
                               f"{offer.leg} leg of attempt {offer.attempt}, but the point is "
                               f"{point.state} at attempt {point.attempt}")
            return
        answer = await self._bridge_join(point, offer)
        if answer is None:
            return
        self._send_down(point, protocol.CallAnswer(session=point.session, attempt=offer.attempt,
                                                   sdp=answer, ts=protocol.now_ms(),
                                                   leg=offer.leg))

    async def _leg_answer(self, point: Participant, answer: protocol.CallAnswer) -> None:
        """The point answers a leg the bridge offered it (the "view" leg of plan "split")."""
        if answer.attempt != point.attempt or point.state not in IN_CALL:
            log.info("call_answer_stale session=%s device=%s attempt=%d leg=%s", point.session,
                     point.device, answer.attempt, answer.leg)
            return
        try:
            await self.bridge.accept(point.session, point.device, answer.attempt, answer.leg,
                                     answer.sdp)
        except BridgeError as exc:
            self._refuse(point.device, point.call, answer, exc.code, str(exc))

    def on_bridge_offer(self, session_id: str, device: str, attempt: int, leg: protocol.Leg,
                         sdp: str) -> None:
        point = self.point(session_id, device)
        if point is None or point.attempt != attempt or point.state not in IN_CALL:
            return
        self._send_down(point, protocol.CallOffer(session=session_id, attempt=attempt, sdp=sdp,
                                                  ts=protocol.now_ms(), leg=leg))

    async def _bye(self, point: Participant, bye: protocol.CallBye) -> None:
        if bye.attempt < point.attempt or point.state not in (*IN_CALL, *PENDING):
            log.info("call_bye_stale session=%s device=%s attempt=%d state=%s", point.session,
                     point.device, bye.attempt, point.state)
            return
        self._set_point(point, "left", f"bye: {bye.reason}")
        await self.bridge.leave(point.session, point.device)
        session = self.get(point.session)
        if session is None or session.state not in ACTIVE:
            return
        if point.role == "host" and bye.reason == "button":
            log.info("session_host_ended session=%s host=%s", session.id, point.device)
            await self.end(session.id, "host")
        elif not any(p.state in (*IN_CALL, *PENDING) for p in self.points(session.id)):
            await self.end(session.id, "empty")

    def on_tele(self, topic: protocol.Topic, message: Inbound) -> None:
        if topic.rest != ("call",):
            raise protocol.ProtocolError(f"no handler for {message.topic[:120]}")
        telemetry = protocol.decode(message.payload, protocol.CallTelemetry)
        registry = self._registry
        registry.set_extra(topic.device, "call", {
            "session": telemetry.session, "state": telemetry.state, "muted": telemetry.muted,
            "ts": telemetry.ts})
        if telemetry.qos is not None:
            registry.set_extra(topic.device, "call_qos", protocol.to_builtins(telemetry.qos))
            self.bridge.link_report(telemetry.session, topic.device, telemetry.qos)

    # -- bridge -> engine ------------------------------------------------------------------------

    def on_peer(self, session_id: str, device: str, attempt: int, event: PeerEvent,
                 detail: str) -> None:
        point = self.point(session_id, device)
        if point is None or point.attempt != attempt or point.state not in IN_CALL:
            return
        if event == "live":
            self._set_point(point, "live", "")
            session = self.get(session_id)
            if session is not None and session.state == "inviting" and point.role == "host":
                self._transition(session, "live")
        else:
            self._set_point(point, "away", detail)

    def on_layout(self, session_id: str, layout: protocol.CallLayout) -> None:
        for point in self.points(session_id):
            if point.state in ("joining", "live"):
                self._send_down(point, layout, expiry=LAYOUT_EXPIRY)

    def on_device(self, device: Any, what: str) -> None:
        """A box that comes back online is invited again where it is still expected."""
        if what not in ("birth", "state") or not device.online:
            return
        rows = self._db.conn.execute(
            "SELECT p.* FROM session_points p JOIN sessions s ON s.id = p.session "
            "WHERE p.device = ? AND s.state IN ('inviting', 'live') "
            "AND p.state IN ('unreachable', 'away')", (device.id,)).fetchall()
        for row in rows:
            point = _participant(row)
            log.info("session_reinvite session=%s device=%s state=%s", point.session,
                     point.device, point.state)
            self._spawn(self._invite(point, rejoin=point.state == "away"))

    # -- plumbing --------------------------------------------------------------------------------

    def _send_down(self, point: Participant, message: protocol.CallDown,
                   expiry: int = protocol.SIGNAL_EXPIRY) -> None:
        self._link.publish(protocol.call_topic(point.device, point.call, "down"),
                                      protocol.encode(message), qos=1, expiry=expiry)

    def _refuse_point(self, point: Participant, offer: protocol.CallOffer | protocol.CallAnswer,
                      code: protocol.ErrorCode, message: str) -> None:
        self._log(point.session, point.device, "refused", f"{code}: {message}")
        self._refuse(point.device, point.call, offer, code, message)

    def _refuse(self, device: str, call: str, offer: protocol.CallOffer | protocol.CallAnswer,
                code: protocol.ErrorCode, message: str) -> None:
        log.warning("call_refused device=%s call=%s attempt=%d code=%s message=%s", device,
                    call, offer.attempt, code, message)
        refusal = protocol.CallRefused(session=offer.session, attempt=offer.attempt, code=code,
                                       message=message[:1000], ts=protocol.now_ms())
        self._link.publish(protocol.call_topic(device, call, "down"),
                                      protocol.encode(refusal), qos=1,
                                      expiry=protocol.SIGNAL_EXPIRY)

    def _set_point(self, point: Participant, state: str, detail: str) -> None:
        if point.state == state and point.detail == detail:
            return
        now = time.time()
        sets: dict[str, object] = {"state": state, "detail": detail}
        if state == "invited":
            sets["invited_at"] = now
        elif state == "live" and point.joined_at is None:
            sets["joined_at"] = now
        elif state in ("left", "declined", "missed"):
            sets["left_at"] = now
        columns = ", ".join(f"{k} = ?" for k in sets)
        with self._db.transaction() as conn:
            conn.execute(f"UPDATE session_points SET {columns} WHERE call = ?",
                         (*sets.values(), point.call))
        log.info("session_point session=%s device=%s state=%s->%s detail=%s", point.session,
                 point.device, point.state, state, detail or "-")
        self._log(point.session, point.device, state, detail)
        for key, value in sets.items():
            setattr(point, key, value)

    def _transition(self, session: Session, state: SessionState, *,
                    end_reason: str | None = None) -> None:
        if state not in TRANSITIONS.get(session.state, ()):
            raise Conflict(f"session {session.id}: {session.state} -> {state} "
                                           "is not allowed")
        now = time.time()
        with self._db.transaction() as conn:
            conn.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, session.id))
            if state == "live":
                conn.execute("UPDATE sessions SET started = ? WHERE id = ?", (now, session.id))
            if state == "ended":
                conn.execute("UPDATE sessions SET ended = ?, end_reason = ? WHERE id = ?",
                             (now, end_reason, session.id))
        old = session.state
        log.info("session_state session=%s state=%s->%s reason=%s", session.id, old, state,
                 end_reason or "-")
        self._log(session.id, None, state, end_reason or "")
        updated = self.get(session.id)
        assert updated is not None
        self._notify(updated, old, state)

    def set_state(self, session_id: str, state: str) -> Session:
        """Move a session along `TRANSITIONS` (e.g. the archive closing an ended session)."""
        session = self.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        self._transition(session, state)  # type: ignore[arg-type]
        updated = self.get(session_id)
        assert updated is not None
        return updated

    def note(self, session_id: str, device: str | None, what: str, detail: str) -> None:
        """Add a line to a session's log (e.g. why the archive cannot close it yet)."""
        self._log(session_id, device, what, detail)

    def _notify(self, session: Session, old: str | None, new: str) -> None:
        for callback in self._listeners:
            try:
                callback(session, old, new)
            except Exception:
                log.exception("session_listener_failed session=%s", session.id)

    def _log(self, session_id: str, device: str | None, what: str, detail: str) -> None:
        self._db.conn.execute(
            "INSERT INTO session_log (session, ts, device, what, detail) VALUES (?, ?, ?, ?, ?)",
            (session_id, time.time(), device, what, detail[:500]))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sessions_task_failed error=%r", task.exception(),
                      exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bridge.close()


def _session(row: Any) -> Session:
    values = dict(row)
    values["auto_join"] = bool(values["auto_join"])
    return Session(**values)


def _participant(row: Any) -> Participant:
    values = dict(row)
    values.pop("answer", None)
    values.pop("rowid", None)  # PostgreSQL's explicit insertion order
    return Participant(**values)

