"""The box's side of a reception session: one WebRTC call to the controller's bridge.

The controller decides who takes part; the box follows and reports. An invitation
(`session-invite`) makes the call LED blink; **Call** (or `auto_join`, or `session-join`) joins;
**Mute** toggles a hard mute (the microphone's samples are replaced by silence before anything
else sees them); **End** leaves, or declines while ringing. A join is one `RTCPeerConnection`
to the bridge that sends the camera's pre-encoded H.264 (`CameraEncoder`, shared with the
recorder) and the microphone, and receives the composed picture and the mix-minus audio.

aiortc has no ICE restart and notices a dead path only after ~30 s of failed consent checks,
so loss is detected here: no media from the bridge for `call.media_timeout`, a failed
connection, or a refused attempt. The box then rejoins with a fresh peer connection (a new
`attempt` of the same call) as soon as MQTT is up, camera and recording carrying on meanwhile.

For the recorder (and anything else that wants the media), stable across sessions:
`sent_video` (encoded camera), `sent_audio` (microphone after mute), `received_video` (the
composed picture as decoded), `received_encoded` (the same, as the H.264 that arrived, for a
recorder that copies instead of re-encoding), `received_audio` (the mix as received), plus
`on_live` and `on_left` callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import av
import msgspec
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

from tiepdan.board.audio import Microphone, Speaker, open_microphone, open_speaker
from tiepdan.board.camera import open_camera
from tiepdan.errors import Conflict, NotFound, Unavailable
from tiepdan.firmware import protocol
from tiepdan.firmware.call.encoder import CameraEncoder
from tiepdan.firmware.core.mqtt import Inbound
from tiepdan.firmware.media.bitrate import BitrateController, ladder, watch_feedback
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import VIDEO_TIME_BASE
from tiepdan.firmware.media.latest import (
    DroppingQueue,
    bound_decoder,
    bound_socket_age,
    is_h264_key,
    latest_frames,
)
from tiepdan.firmware.media.rtc import (
    LIVE_AUDIO_QUEUE,
    LIVE_MAX_AGE_S,
    LIVE_VIDEO_QUEUE,
    FrameTrack,
    PacketTrack,
    QosMeter,
    check_sdp,
    close_quietly,
    describe,
    on_keyframe_request,
    peer_connection,
    prefer_h264,
)

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent

log = logging.getLogger(__name__)

LiveCallback = Callable[[str, str], None]
LeftCallback = Callable[[str], None]

IN_CALL = ("joining", "live", "reconnecting")
# Refusals after which retrying cannot help: the session is gone or the box is not in it.
FINAL_REFUSALS = ("not_found", "expired", "forbidden", "conflict")
REJOIN_PAUSE_S = (0.2, 0.5, 1.0, 2.0)


class AttemptFailed(Unavailable):
    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class CallClient:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._config = agent.config.call
        self.device = agent.device
        self.state: protocol.CallStateName = "idle"
        self.muted = False
        self.invite: protocol.SessionInvite | None = None
        self.attempt = 0
        self.layout: protocol.CallLayout | None = None
        self.qos: protocol.CallQos | None = None
        self.error: str | None = None
        self._encoder: CameraEncoder | None = None
        self._microphone: Microphone | None = None
        self.speaker: Speaker | None = None
        self.sent_audio: Fanout[av.AudioFrame] = Fanout("microphone")
        self.received_video: Fanout[av.VideoFrame] = Fanout("received-video")
        # The composed picture as it arrives (H.264 access units), for recording it as is.
        self.received_encoded: Fanout[av.Packet[Stream]] = Fanout(
            "received-h264", is_key=lambda p: bool(p.is_keyframe),
            on_key_request=self._request_received_key)
        self._received_queue: DroppingQueue | None = None
        self.received_audio: Fanout[av.AudioFrame] = Fanout("received-audio")
        # The camera's raw pictures while in a session (the screen's self-view).
        self.self_view: Fanout[av.VideoFrame] = Fanout("self-view")
        self._sent_video: Fanout[av.Packet[Stream]] | None = None
        self._on_live: list[LiveCallback] = []
        self._on_left: list[LeftCallback] = []
        self._session_task: asyncio.Task[None] | None = None
        self._ring_timer: asyncio.TimerHandle | None = None
        # What the attempt under way waits for from the bridge, by leg.
        self._answers: dict[str, asyncio.Future[protocol.CallAnswer]] = {}
        self._offers: dict[str, asyncio.Future[protocol.CallOffer]] = {}
        self._bye: asyncio.Event = asyncio.Event()
        self._last_media = 0.0
        self._frames_received = 0

    # -- the recorder's seam -----------------------------------------------------------------

    @property
    def sent_video(self) -> Fanout[av.Packet[Stream]]:
        """The camera's encoded stream (the encoder is built on first use, then kept)."""
        return self._media()[0].video

    def _tap_received(self, codec: str, data: bytes, timestamp: int) -> None:
        if codec != "H264" or not self.received_encoded.subscribers:
            return
        packet = av.Packet(data)
        packet.pts = packet.dts = timestamp
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = is_h264_key(data)
        self.received_encoded.publish(packet)

    def _request_received_key(self) -> None:
        """A recorder starting a segment wants a key frame of the composed picture: PLI."""
        if self._received_queue is not None:
            self._received_queue.request_key()

    def on_live(self, callback: LiveCallback) -> None:
        """`callback(session_id, call_id)` each time media flows (first join and every rejoin)."""
        self._on_live.append(callback)

    def on_left(self, callback: LeftCallback) -> None:
        """`callback(session_id)` once the box has left a session it joined."""
        self._on_left.append(callback)

    @property
    def session(self) -> str | None:
        return self.invite.session if self.invite else None

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state, "session": self.session, "muted": self.muted,
            "call": self.invite.call if self.invite else None, "attempt": self.attempt,
            "qos": None if self.qos is None else protocol.to_builtins(self.qos),
            "error": self.error,
        }

    # -- commands --------------------------------------------------------------------------------

    async def cmd_invite(self, args: dict[str, Any]) -> Any:
        invite = protocol.convert(args, protocol.SessionInvite)
        if self.invite is not None and self.invite.session != invite.session \
                and self.state != "idle":
            raise Conflict(code="busy", message=f"in session {self.invite.session} ({self.state})")
        if self.invite is not None and self.invite.session == invite.session \
                and self.state != "idle":
            if invite.auto_join and self.state == "invited":
                self._join()
            return self.status()  # a repeated invitation (controller restart, rejoin)
        if invite.expires <= protocol.now_ms():
            raise Conflict(code="expired", message="the invitation has already expired")
        self.invite, self.attempt, self.error, self.layout = invite, invite.attempt, None, None
        log.info("call_invited device=%s session=%s call=%s role=%s auto_join=%s", self.device,
                 invite.session, invite.call, invite.role, invite.auto_join)
        if invite.auto_join or self._agent.shadow.config.auto_join:
            self._join()
        else:
            self._set_state("invited")
            loop = asyncio.get_running_loop()
            delay = (invite.expires - protocol.now_ms()) / 1000
            self._ring_timer = loop.call_later(delay, self._ring_expired, invite.session)
        return self.status()

    async def cmd_join(self, args: dict[str, Any]) -> Any:
        ref = protocol.convert(args, protocol.SessionRef)
        if self.invite is None or self.invite.session != ref.session:
            raise NotFound(f"not invited to session {ref.session}")
        if self.state == "invited":
            self._join()
        elif self.state == "idle":
            raise Conflict(f"left session {ref.session} already")
        return self.status()

    async def cmd_leave(self, args: dict[str, Any]) -> Any:
        ref = protocol.convert(args, protocol.SessionRef)
        if self.invite is not None and self.invite.session == ref.session \
                and self.state != "idle":
            await self.leave(ref.reason)
        return self.status()

    # -- buttons ---------------------------------------------------------------------------------

    def on_button(self, name: str) -> bool:
        if name == "call" and self.state == "invited":
            self._join()
            return True
        if name == "mute" and self.state in IN_CALL:
            self.set_muted(not self.muted)
            return True
        if name == "end" and self.state == "invited":
            self._decline()
            return True
        if name == "end" and self.state in IN_CALL:
            task = asyncio.ensure_future(self.leave("button"))
            task.add_done_callback(_log_failure)
            return True
        return False

    def set_muted(self, muted: bool) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        log.info("call_mute device=%s muted=%s", self.device, muted)
        self._agent.indicators.update(muted=muted)
        self._report()

    # -- state -----------------------------------------------------------------------------------

    def _set_state(self, state: protocol.CallStateName) -> None:
        if state == self.state:
            return
        log.info("call_state device=%s session=%s state=%s->%s attempt=%d", self.device,
                 self.session, self.state, state, self.attempt)
        self.state = state
        self._agent.indicators.update(
            invited=state == "invited",
            joining=state in ("joining", "reconnecting"),
            in_call=state == "live",
            muted=self.muted and state in IN_CALL,
        )
        if state in IN_CALL:
            self._agent.hold("session")
        else:
            self._agent.release("session")
        self._report()

    def _report(self) -> None:
        invite = self.invite
        if invite is None or not self._agent.link.connected:
            return
        report = protocol.CallReport(session=invite.session, attempt=self.attempt,
                                     state=self.state, muted=self.muted, ts=protocol.now_ms(),
                                     error=self.error)
        self._publish_up(report)

    def _publish_up(self, message: protocol.CallUp) -> None:
        assert self.invite is not None
        self._agent.link.publish(protocol.call_topic(self.device, self.invite.call, "up"),
                                 protocol.encode(message), qos=1,
                                 expiry=protocol.SIGNAL_EXPIRY)

    def _ring_expired(self, session: str) -> None:
        if self.state == "invited" and self.session == session:
            log.info("call_invitation_expired device=%s session=%s", self.device, session)
            self._set_state("idle")

    def _decline(self) -> None:
        assert self.invite is not None
        log.info("call_declined device=%s session=%s", self.device, self.invite.session)
        self._publish_up(protocol.CallDecline(session=self.invite.session, ts=protocol.now_ms()))
        self._cancel_ring()
        self._set_state("idle")

    def _cancel_ring(self) -> None:
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None

    def _join(self) -> None:
        assert self.invite is not None
        self._cancel_ring()
        self._bye.clear()
        self._set_state("joining")
        self._session_task = asyncio.ensure_future(self._run_session(self.invite))
        self._session_task.add_done_callback(_log_failure)

    async def leave(self, reason: str) -> None:
        """Leave the session: tell the bridge, stop media, report."""
        invite, task = self.invite, self._session_task
        if invite is None or self.state == "idle":
            return
        log.info("call_leave device=%s session=%s reason=%s", self.device, invite.session,
                 reason)
        was_in_call = self.state in IN_CALL
        self._cancel_ring()
        if was_in_call and self._agent.link.connected:
            self._publish_up(protocol.CallBye(session=invite.session, attempt=self.attempt,
                                              reason=reason, ts=protocol.now_ms()))
        self._session_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.set_muted(False)
        self._set_state("idle")
        if was_in_call:
            for callback in self._on_left:
                _safely(callback, invite.session)

    # -- media -----------------------------------------------------------------------------------

    def _media(self) -> tuple[CameraEncoder, Microphone, Speaker]:
        """Camera encoder, microphone and speaker, built on first use and kept."""
        if self._encoder is None or self._microphone is None or self.speaker is None:
            profile = self._agent.profile
            camera = open_camera(profile.camera, label=self._agent.config.device.name)
            self._encoder = CameraEncoder(camera, bitrate=self._config.video_bitrate,
                                          keyframe_interval=self._config.keyframe_interval,
                                          frames=self.self_view, control=self._bitrate_control())
            self._microphone = open_microphone(profile.audio, label=self.device)
            self.speaker = open_speaker(profile.audio)
        return self._encoder, self._microphone, self.speaker

    def _bitrate_control(self) -> BitrateController | None:
        """The camera's adaptive bitrate (`call.adaptive_bitrate`), kept across rejoins (a box
        on a poor link starts its next attempt where the last one had settled), reset for
        each session."""
        config, spec = self._config, self._agent.profile.camera
        if not config.adaptive_bitrate:
            return None
        floor, ceiling = config.min_video_bitrate, config.video_bitrate
        return BitrateController(ladder(spec.width, spec.height, spec.fps, floor=floor,
                                        ceiling=ceiling), floor=floor, ceiling=ceiling,
                                 name="camera")

    def _adapt(self, video: RTCRtpTransceiver) -> None:
        """Route the bridge's REMB and receiver reports about our video to the encoder."""
        control = self._media()[0].control
        if control is not None:
            watch_feedback(video.sender, control)

    async def _microphone_loop(self, microphone: Microphone) -> None:
        await microphone.start()
        try:
            while True:
                frame = await microphone.read()
                if self.muted:
                    frame = _silence(frame)
                self.sent_audio.publish(frame)
        finally:
            await microphone.stop()

    async def _run_session(self, invite: protocol.SessionInvite) -> None:
        """Join, and rejoin after every loss, until the box leaves or the session is over."""
        encoder, microphone, speaker = self._media()
        if encoder.control is not None:
            encoder.control.reset()  # this session's link, not the last one's
        await speaker.start()
        media = [asyncio.ensure_future(encoder.run()),
                 asyncio.ensure_future(self._microphone_loop(microphone))]
        failures = 0
        try:
            while True:
                if not self._agent.link.connected:
                    await self._agent.link.wait_connected()
                self.attempt += 1
                try:
                    await self._attempt(invite)
                    failures = 0
                    if self._bye.is_set():
                        break
                    reason = "media lost"
                except AttemptFailed as exc:
                    if exc.final:
                        self.error = str(exc)
                        log.error("call_refused device=%s session=%s attempt=%d error=%s",
                                  self.device, invite.session, self.attempt, exc)
                        break
                    reason = str(exc)
                    failures += 1
                log.warning("call_rejoin device=%s session=%s attempt=%d reason=%s",
                            self.device, invite.session, self.attempt, reason)
                self._set_state("reconnecting")
                await asyncio.sleep(REJOIN_PAUSE_S[min(failures, len(REJOIN_PAUSE_S) - 1)])
        finally:
            for task in media:
                task.cancel()
            await asyncio.gather(*media, return_exceptions=True)
            await speaker.stop()
        # The bridge said bye (session ended, box removed) or refused for good.
        self._session_task = None
        await self.leave("ended" if self._bye.is_set() else "refused")

    async def _attempt(self, invite: protocol.SessionInvite) -> None:
        """One peer connection, from offer until it is lost; raises AttemptFailed."""
        if invite.plan == "split":
            await self._attempt_split(invite)
            return
        pc = peer_connection(invite.ice_servers)
        receivers: list[asyncio.Future[None]] = []
        video_track = PacketTrack(self.sent_video.subscribe(f"call-{self.attempt}",
                                                            capacity=LIVE_VIDEO_QUEUE,
                                                            max_age=LIVE_MAX_AGE_S))
        audio_track = FrameTrack("audio", self.sent_audio.subscribe(f"call-{self.attempt}",
                                                                    capacity=LIVE_AUDIO_QUEUE,
                                                                    max_age=LIVE_MAX_AGE_S))
        video = pc.addTransceiver(video_track, direction="sendrecv")
        prefer_h264(video)
        on_keyframe_request(video.sender, self.sent_video.request_key)
        self._adapt(video)
        pc.addTransceiver(audio_track, direction="sendrecv")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receivers.append(asyncio.ensure_future(self._receive(track)))

        answer_due = self._expect_answers("main")
        try:
            await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
            self._offer_leg(invite, pc, "main")
            await self._take_answer(pc, answer_due["main"], ("audio", "video"))
            self._last_media = time.monotonic()
            await self._watch([pc], pc, invite, video_track)
        finally:
            self._forget_waits()
            for receiver in receivers:
                receiver.cancel()
            await close_quietly(pc)
            await asyncio.gather(*receivers, return_exceptions=True)

    async def _attempt_split(self, invite: protocol.SessionInvite) -> None:
        """Plan "split" (an SFU bridge): camera out on one connection, audio both ways on a
        second, the composed picture in on a third that the bridge offers."""
        servers = invite.ice_servers
        publish, audio, view = (peer_connection(servers), peer_connection(servers),
                                peer_connection(servers))
        receivers: list[asyncio.Future[None]] = []
        video_track = PacketTrack(self.sent_video.subscribe(f"call-{self.attempt}",
                                                            capacity=LIVE_VIDEO_QUEUE,
                                                            max_age=LIVE_MAX_AGE_S))
        audio_track = FrameTrack("audio", self.sent_audio.subscribe(f"call-{self.attempt}",
                                                                    capacity=LIVE_AUDIO_QUEUE,
                                                                    max_age=LIVE_MAX_AGE_S))
        video = publish.addTransceiver(video_track, direction="sendonly")
        prefer_h264(video)
        on_keyframe_request(video.sender, self.sent_video.request_key)
        self._adapt(video)
        audio.addTransceiver(audio_track, direction="sendrecv")
        for pc in (audio, view):
            pc.on("track", lambda track: receivers.append(
                asyncio.ensure_future(self._receive(track))))
        answer_due = self._expect_answers("publish", "audio")
        loop = asyncio.get_running_loop()
        view_due = self._offers["view"] = loop.create_future()
        try:
            await publish.setLocalDescription(await publish.createOffer())
            await audio.setLocalDescription(await audio.createOffer())
            self._offer_leg(invite, publish, "publish")
            await self._take_answer(publish, answer_due["publish"], ("video",))
            self._offer_leg(invite, audio, "audio")
            await self._take_answer(audio, answer_due["audio"], ("audio",))
            try:
                async with asyncio.timeout(self._config.join_timeout):
                    offer = await view_due
                check_sdp(offer.sdp, "offer", kinds=("video",))
                await view.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                self._received_queue = bound_decoder(view, self._tap_received)
                await view.setLocalDescription(await view.createAnswer())
                bound_socket_age(view)
            except TimeoutError:
                raise AttemptFailed("the bridge offered no view") from None
            except (protocol.ProtocolError, ValueError) as exc:
                raise AttemptFailed(f"unusable view offer: {describe(exc)}") from None
            self._publish_up(protocol.CallAnswer(session=invite.session, attempt=self.attempt,
                                                 sdp=view.localDescription.sdp,
                                                 ts=protocol.now_ms(), leg="view"))
            self._last_media = time.monotonic()
            await self._watch([publish, audio, view], view, invite, video_track,
                              sending=[publish, audio])
        finally:
            self._forget_waits()
            for receiver in receivers:
                receiver.cancel()
            for pc in (publish, audio, view):
                await close_quietly(pc)
            await asyncio.gather(*receivers, return_exceptions=True)

    def _forget_waits(self) -> None:
        waits: list[asyncio.Future[Any]] = [*self._answers.values(), *self._offers.values()]
        for waiting in waits:
            if waiting.done() and not waiting.cancelled():
                waiting.exception()  # a refusal nobody awaited any more is no error
        self._answers, self._offers = {}, {}

    def _expect_answers(self, *legs: str) -> dict[str, asyncio.Future[protocol.CallAnswer]]:
        loop = asyncio.get_running_loop()
        self._answers = {leg: loop.create_future() for leg in legs}
        self._offers = {}
        return dict(self._answers)

    def _offer_leg(self, invite: protocol.SessionInvite, pc: RTCPeerConnection,
                   leg: protocol.Leg) -> None:
        self._publish_up(protocol.CallOffer(session=invite.session, attempt=self.attempt,
                                            sdp=pc.localDescription.sdp, ts=protocol.now_ms(),
                                            leg=leg))
        log.info("call_offer device=%s session=%s attempt=%d leg=%s", self.device,
                 invite.session, self.attempt, leg)

    async def _take_answer(self, pc: RTCPeerConnection,
                           due: asyncio.Future[protocol.CallAnswer],
                           kinds: tuple[str, ...]) -> None:
        try:
            async with asyncio.timeout(self._config.join_timeout):
                answer = await due
        except TimeoutError:
            raise AttemptFailed("no answer from the bridge") from None
        try:
            check_sdp(answer.sdp, "answer", kinds=kinds)
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        except (protocol.ProtocolError, ValueError) as exc:
            raise AttemptFailed(f"unusable answer: {describe(exc)}") from None
        video = bound_decoder(pc, self._tap_received)
        if video is not None:
            self._received_queue = video
        bound_socket_age(pc)

    async def _watch(self, pcs: list[RTCPeerConnection], metered: RTCPeerConnection,
                     invite: protocol.SessionInvite, video_track: PacketTrack,
                     sending: list[RTCPeerConnection] | None = None) -> None:
        """Follow the connections: live on the first composed picture, lost on silence."""
        meter = QosMeter(metered, lambda: video_track.sent, lambda: self._frames_received,
                         sending=sending)
        first_frame = self._frames_received
        joined = time.monotonic()
        next_qos = time.monotonic() + self._config.qos_interval
        while not self._bye.is_set():
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for pc in pcs:
                if pc.connectionState in ("failed", "closed"):
                    raise AttemptFailed(f"connection {pc.connectionState}")
            if self.state != "live":
                if self._frames_received > first_frame:
                    self._went_live(invite)
                elif now - joined > self._config.join_timeout:
                    raise AttemptFailed("no media from the bridge after joining")
            elif now - self._last_media > self._config.media_timeout:
                raise AttemptFailed(f"no media for {self._config.media_timeout:g}s")
            if now >= next_qos:
                next_qos = now + self._config.qos_interval
                await self._send_qos(meter, invite)

    def _went_live(self, invite: protocol.SessionInvite) -> None:
        self.error = None
        self._set_state("live")
        for callback in self._on_live:
            _safely(callback, invite.session, invite.call)

    async def _send_qos(self, meter: QosMeter, invite: protocol.SessionInvite) -> None:
        try:
            qos = await meter.measure()
        except Exception as exc:  # stats are best effort; the call matters more
            log.warning("call_stats_failed error=%s", describe(exc))
            return
        if self._encoder is not None:
            width, height, fps, bitrate = self._encoder.sending()
            qos = msgspec.structs.replace(qos, target_kbps=round(bitrate / 1000, 1),
                                          video_width=width, video_height=height, video_fps=fps)
        self.qos = qos
        log.info("call_qos device=%s session=%s kbps_sent=%.0f target_kbps=%s size=%sx%s "
                 "fps=%s loss_sent=%s rtt_ms=%s", self.device, invite.session, qos.kbps_sent,
                 qos.target_kbps, qos.video_width, qos.video_height, qos.video_fps,
                 qos.loss_sent, qos.rtt_ms)
        telemetry = protocol.CallTelemetry(ts=protocol.now_ms(), session=invite.session,
                                           call=invite.call, state=self.state,
                                           muted=self.muted, qos=qos)
        if self._agent.link.connected:
            self._agent.link.publish(protocol.tele_topic(self.device, "call"),
                                     protocol.encode(telemetry), qos=0,
                                     expiry=max(2, int(2 * self._config.qos_interval)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        speaker = self.speaker
        try:
            async for frame in (latest_frames(track) if track.kind == "video"
                                else _frames(track)):
                self._last_media = time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    self._frames_received += 1
                    self.received_video.publish(frame)
                elif isinstance(frame, av.AudioFrame):
                    self.received_audio.publish(frame)
                    if speaker is not None:
                        await speaker.write(frame)
        except MediaStreamError:
            return

    # -- bridge -> box ---------------------------------------------------------------------------

    def on_down(self, topic: protocol.Topic, message: Inbound) -> None:
        if len(topic.rest) != 2 or topic.rest[1] != "down":
            raise protocol.ProtocolError(f"not a call/<call>/down topic: {message.topic[:120]}")
        down = protocol.decode_call_down(message.payload)
        invite = self.invite
        if invite is None or topic.rest[0] != invite.call or down.session != invite.session:
            log.info("call_message_stale device=%s call=%s type=%s", self.device, topic.rest[0],
                     type(down).__name__)
            return
        if isinstance(down, protocol.CallLayout):
            self.layout = down
            return
        if isinstance(down, protocol.CallBye):
            log.info("call_bye_received device=%s session=%s reason=%s", self.device,
                     down.session, down.reason)
            self._bye.set()
            if self.state in ("invited", "idle"):
                self._cancel_ring()
                self._set_state("idle")
            return
        if down.attempt != self.attempt:
            log.info("call_message_stale device=%s attempt=%d current=%d type=%s", self.device,
                     down.attempt, self.attempt, type(down).__name__)
            return
        if isinstance(down, protocol.KeyframeRequest):
            self.sent_video.request_key()
        elif isinstance(down, protocol.CallAnswer):
            answer = self._answers.get(down.leg)
            if answer is not None and not answer.done():
                answer.set_result(down)
        elif isinstance(down, protocol.CallOffer):
            offer = self._offers.get(down.leg)
            if offer is not None and not offer.done():
                offer.set_result(down)
        else:
            refused = AttemptFailed(f"bridge refused: {down.code}: {down.message}",
                                    final=down.code in FINAL_REFUSALS)
            waits: list[asyncio.Future[Any]] = [*self._answers.values(),
                                                 *self._offers.values()]
            for waiting in waits:
                if not waiting.done():
                    waiting.set_exception(refused)
                    refused = AttemptFailed(str(refused), final=refused.final)

    async def run(self) -> None:
        """Lives as long as the agent; on shutdown closes the call rather than abandon it."""
        try:
            await asyncio.Event().wait()
        finally:
            task = self._session_task
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    async with asyncio.timeout(5):
                        await task


async def _frames(track: MediaStreamTrack) -> Any:
    """Every frame of an audio track, in order (audio is never skipped)."""
    while True:
        yield await track.recv()


def _silence(frame: av.AudioFrame) -> av.AudioFrame:
    silent = av.AudioFrame.from_ndarray(np.zeros((1, frame.samples), dtype=np.int16),
                                        format="s16", layout="mono")
    silent.sample_rate = frame.sample_rate
    silent.pts = frame.pts
    silent.time_base = frame.time_base
    return silent


def _safely(callback: Callable[..., None], *args: str) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("call_callback_failed callback=%r", callback)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("call_task_failed error=%s", describe(task.exception()),  # type: ignore[arg-type]
                  exc_info=task.exception())
