"""The media bridge: where every point's media meets, behind one interface.

The session engine speaks to a bridge in signaling terms only (an SDP offer in, an SDP answer
out, peers joining, leaving, going live or being lost), so the built-in aiortc bridge
(`AiortcBridge`: decode, compose, encode once, mix-minus) or the Janus backend
(`JanusBridge`: VideoRoom forwards, AudioBridge mixes, a compositor composes) serve the same
engine. A point is whatever offers SDP: a box over MQTT, or a browser. Per session a bridge exposes
the composed stream and the full mix (`BridgeSession`) for the recorder.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import av
from av.stream import Stream

from tiepdan.controller.config import BridgeSection
from tiepdan.errors import Unavailable
from tiepdan.firmware import protocol
from tiepdan.firmware.media.fanout import Fanout

log = logging.getLogger(__name__)

PeerEvent = Literal["live", "lost"]
PeerListener = Callable[[str, str, int, PeerEvent, str], None]
LayoutListener = Callable[[str, protocol.CallLayout], None]
# (session_id, device, attempt, leg, sdp): the bridge offers a leg to a point.
OfferListener = Callable[[str, str, int, protocol.Leg, str], None]


class BridgeError(Unavailable):
    """An offer the bridge refuses; `code` goes back to the box in a `CallRefused`."""

    def __init__(self, code: protocol.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: protocol.ErrorCode = code


class BridgeSession(abc.ABC):
    """One session's media on the bridge."""

    id: str
    composed_video: Fanout[av.Packet[Stream]]  # the one encoded picture every point receives
    mixed_audio: Fanout[av.AudioFrame]  # every point's audio, mixed

    @abc.abstractmethod
    def layout(self) -> protocol.CallLayout: ...

    @abc.abstractmethod
    async def stats(self) -> dict[str, protocol.CallQos]:
        """Per point, seen from the bridge."""

    @property
    @abc.abstractmethod
    def frames_composed(self) -> int: ...

    @abc.abstractmethod
    async def leave(self, device: str) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


S = TypeVar("S", bound=BridgeSession)


MediaListener = Callable[[str, BridgeSession], None]


class Bridge(abc.ABC, Generic[S]):
    """Keeps the sessions' media (`S` per session) and tells listeners what happens."""

    # How points connect (`protocol.MediaPlan`), told to every box in its invitation.
    plan: protocol.MediaPlan = "single"

    def __init__(self) -> None:
        self._sessions: dict[str, S] = {}
        self._media_listeners: list[MediaListener] = []
        self._peer_listeners: list[PeerListener] = []
        self._layout_listeners: list[LayoutListener] = []
        self._offer_listeners: list[OfferListener] = []

    def on_session_media(self, callback: MediaListener) -> None:
        """`callback(session_id, bridge_session)` when a session's media starts on the bridge."""
        self._media_listeners.append(callback)

    def on_peer(self, callback: PeerListener) -> None:
        """`callback(session_id, device, attempt, event, detail)`: a point went live or was lost."""
        self._peer_listeners.append(callback)

    def on_layout(self, callback: LayoutListener) -> None:
        """`callback(session_id, layout)` when tiles or the active speaker change."""
        self._layout_listeners.append(callback)

    def on_offer(self, callback: OfferListener) -> None:
        """`callback(session_id, device, attempt, leg, sdp)`: send this offer to the point."""
        self._offer_listeners.append(callback)

    @abc.abstractmethod
    async def join(self, session_id: str, device: str, name: str, role: protocol.PointRole,
                   attempt: int, offer: str, leg: protocol.Leg = "main") -> str:
        """Connect a point's leg (replacing an older attempt of it); returns the SDP answer.

        The "main" leg (plan "single") or the "publish" leg (plan "split") starts an attempt;
        the point's other legs follow with the same attempt. Raises BridgeError for an offer
        it cannot take.
        """

    async def accept(self, session_id: str, device: str, attempt: int, leg: protocol.Leg,
                     answer: str) -> None:
        """The point's answer to a leg the bridge offered (`on_offer`)."""
        raise BridgeError("bad_request", f"this bridge offers no {leg} leg")

    def link_report(self, session_id: str, device: str, qos: protocol.CallQos) -> None:
        """A point's own call-quality report (its `tele/call`), for a bridge that adapts what
        it sends the point by it (the Janus backend's renditions; aiortc has RTCP for that)."""

    async def leave(self, session_id: str, device: str) -> None:
        """Disconnect a point and drop its tile; nothing if it is not there."""
        session = self._sessions.get(session_id)
        if session is not None:
            await session.leave(device)

    async def close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            await session.close()
            log.info("bridge_session_closed session=%s frames=%d", session_id,
                     session.frames_composed)

    def session(self, session_id: str) -> S | None:
        return self._sessions.get(session_id)

    async def close(self) -> None:
        for session_id in list(self._sessions):
            await self.close_session(session_id)

    def _media_started(self, session: BridgeSession) -> None:
        for callback in self._media_listeners:
            _safely(callback, session.id, session)

    def _peer_event(self, session_id: str, device: str, attempt: int, event: PeerEvent,
                    detail: str) -> None:
        for callback in self._peer_listeners:
            _safely(callback, session_id, device, attempt, event, detail)

    def _layout_changed(self, session_id: str, layout: protocol.CallLayout) -> None:
        for callback in self._layout_listeners:
            _safely(callback, session_id, layout)

    def _offer_leg(self, session_id: str, device: str, attempt: int, leg: protocol.Leg,
                   sdp: str) -> None:
        for callback in self._offer_listeners:
            _safely(callback, session_id, device, attempt, leg, sdp)


def build_bridge(config: BridgeSection) -> Bridge[Any]:
    """The backend the configuration names (`bridge.backend`)."""
    if config.backend == "janus":
        from tiepdan.controller.sessions.bridge.janus_bridge import JanusBridge

        return JanusBridge(config)
    from tiepdan.controller.sessions.bridge.aiortc_bridge import AiortcBridge

    return AiortcBridge(config)


def _safely(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("bridge_listener_failed callback=%r", callback)
