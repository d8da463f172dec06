"""Bad input: each gets a clear refusal or a timeout, is logged, and the session goes on."""

from __future__ import annotations

from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack

from tests.sessions.points import latest_picture, points, session_controller
from tests.support import Observer, eventually
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.media.rtc import prefer_h264
from tiepdan.tools.broker import Mosquitto

DEVICES = ["bi-host", "bi-1"]


async def register_fake_box(observer: Observer, device: str) -> None:
    """A box that exists in the registry but whose agent never answers anything."""
    birth = protocol.Birth(seq=0, ts=protocol.now_ms(), firmware="0", board="sim", boot_id="x",
                           point=protocol.Point(kind="commune", name=f"Fake {device}"),
                           keepalive=10)
    await observer.link.publish(protocol.birth_topic(device), protocol.encode(birth),
                                retain=True)


async def offer(observer: Observer, device: str, call: str, session: str, attempt: int,
                sdp: str) -> protocol.CallDown:
    down = protocol.call_topic(device, call, "down")
    seen = len(observer.on(down))
    await observer.link.publish(protocol.call_topic(device, call, "up"), protocol.encode(
        protocol.CallOffer(session=session, attempt=attempt, sdp=sdp, ts=protocol.now_ms())))

    def replies() -> list[protocol.CallDown]:
        return [r for r in (protocol.decode_call_down(m.payload) for m in observer.on(down)[seen:])
                if isinstance(r, protocol.CallAnswer | protocol.CallRefused)]

    await eventually(replies, 10, what=f"answer or refusal on {down}")
    return replies()[0]


async def raw_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    video = pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
    prefer_h264(video)
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def still_flowing(agents: dict[str, Agent]) -> None:
    """The real points still receive pictures and are live."""
    for agent in agents.values():
        await latest_picture(agent)
        assert agent.call.state == "live"


async def test_bad_offers_are_refused_and_the_session_goes_on(tmp_path: Path,
                                                              broker: Mosquitto) -> None:
    async with session_controller(tmp_path, broker, invite_timeout=2.0) as controller, \
            points(tmp_path, broker, DEVICES) as agents, \
            Observer(broker, "intruder") as observer:
        await observer.link.subscribe((protocol.device_filter("+", "call/+/down"), 1))
        await eventually(lambda: all(controller.registry.get(d) for d in DEVICES), 10,
                         what="boxes registered")
        await register_fake_box(observer, "bi-fake")
        await eventually(lambda: controller.registry.get("bi-fake"), 5, what="fake registered")
        session = await controller.sessions.open("bi-host", ["bi-1", "bi-fake"], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="real points live")

        # A box that never answers its invitation: a timeout, then "unreachable".
        await eventually(lambda: controller.sessions.point(session.id, "bi-fake").state
                         == "unreachable", 10, what="silent box marked unreachable")
        fake = controller.sessions.point(session.id, "bi-fake")
        assert "timeout" in fake.detail

        # Malformed SDP.
        reply = await offer(observer, "bi-fake", fake.call, session.id, 1, "v=0\r\nnonsense")
        assert isinstance(reply, protocol.CallRefused) and reply.code == "bad_request", reply
        # A join for an unknown call / session.
        reply = await offer(observer, "bi-fake", "c-unknown", "s-unknown", 1, "v=0")
        assert isinstance(reply, protocol.CallRefused) and reply.code == "not_found", reply
        await still_flowing(agents)

        # A second join from a box already in the call: a stale attempt is refused, the
        # duplicate of the current one gets the same answer again.
        real = controller.sessions.point(session.id, "bi-1")
        pc, sdp = await raw_offer()
        try:
            reply = await offer(observer, "bi-1", real.call, session.id, real.attempt - 1, sdp)
            assert isinstance(reply, protocol.CallRefused) and reply.code == "conflict", reply
            reply = await offer(observer, "bi-1", real.call, session.id, real.attempt, sdp)
            assert isinstance(reply, protocol.CallAnswer), reply
        finally:
            await pc.close()
        await still_flowing(agents)

        # A peer that joins, then stops sending media: dropped after media_timeout, and
        # reported away; nobody else notices.
        pc, sdp = await raw_offer()
        try:
            reply = await offer(observer, "bi-fake", fake.call, session.id, 1, sdp)
            assert isinstance(reply, protocol.CallAnswer), reply
            await pc.setRemoteDescription(RTCSessionDescription(reply.sdp, "answer"))
            await eventually(lambda: controller.sessions.point(session.id, "bi-fake").state
                             == "live", 20, what="raw peer live")
            for transceiver in pc.getTransceivers():
                transceiver.sender.replaceTrack(None)
            await eventually(lambda: controller.sessions.point(session.id, "bi-fake").state
                             == "away", 10, what="silent peer dropped")
            assert "no media" in controller.sessions.point(session.id, "bi-fake").detail
        finally:
            await pc.close()
        await still_flowing(agents)

        # A second session cannot take a box that is in a live one.
        other = await controller.sessions.open("bi-fake", ["bi-1"])
        await eventually(lambda: controller.sessions.point(other.id, "bi-1").state
                         == "unreachable", 10, what="busy box refuses the invitation")
        assert "busy" in controller.sessions.point(other.id, "bi-1").detail

        # An offer for a session that has ended.
        await controller.sessions.end(other.id)
        stale = controller.sessions.point(other.id, "bi-1")
        reply = await offer(observer, "bi-1", stale.call, other.id, 1, "v=0")
        assert isinstance(reply, protocol.CallRefused) and reply.code == "expired", reply
        await still_flowing(agents)
        assert controller.sessions.get(session.id).state == "live"
