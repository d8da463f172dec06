"""WHIP and WHEP endpoints: any client with a person's token, and every bad request refused."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from PIL import Image

from tests.controller.console_support import announce_all, console_controller
from tests.sessions.points import BRIDGE
from tiepdan.firmware.media.rtc import close_quietly, peer_connection
from tiepdan.tools.broker import Mosquitto

BOXES = {"tinh-nghe-an": ("nghe-an", ""), "xa-nghi-loc": ("nghe-an", "nghi-loc")}


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("aioice.ice.get_host_addresses",
                        lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
    yield


async def offer(*, h264: bool, direction: str = "sendrecv") -> tuple[RTCPeerConnection, str]:
    pc = peer_connection()
    pc.addTransceiver("audio", direction=direction)
    video = pc.addTransceiver("video", direction=direction)
    if h264:
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType in ("video/H264", "video/rtx")])
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_whip_with_a_token_and_every_refusal(tmp_path: Path, broker: Mosquitto) -> None:
    async with console_controller(tmp_path, broker, bridge=BRIDGE) as c:
        await announce_all(c, BOXES)
        session = await c.sessions.open("tinh-nghe-an", ["xa-nghi-loc"])
        leader, _ = c.people.tokens.issue("lanhdao", "obs")
        archivist, _ = c.people.tokens.issue("luutru", "x")
        base = f"http://127.0.0.1:{c.http_port}"
        pcs: list[RTCPeerConnection] = []
        try:
            async with aiohttp.ClientSession(base) as http:
                def auth(token: str) -> dict[str, str]:
                    return {"Authorization": f"Bearer {token}",
                            "Content-Type": "application/sdp"}

                async def post(path: str, body: str, token: str = leader,
                               **headers: str) -> tuple[int, str, str]:
                    async with http.post(path, data=body.encode(),
                                         headers={**auth(token), **headers}) as reply:
                        return reply.status, await reply.text(), \
                            reply.headers.get("Location", "")

                pc, vp8 = await offer(h264=False)
                pcs.append(pc)
                status, text, _ = await post(f"/whip/{session.id}", vp8)
                assert status == 400 and "H.264" in text
                assert c.bridge.session(session.id) is None  # nothing started for it
                status, _, _ = await post(f"/whip/{session.id}", "v=0\r\nnonsense")
                assert status == 400
                status, _, _ = await post(f"/whip/{session.id}", vp8,
                                          **{"Content-Type": "text/plain"})
                assert status == 415
                status, _, _ = await post("/whip/s-000000000000", vp8)
                assert status == 404
                status, _, _ = await post(f"/whip/{session.id}", vp8, token=archivist)
                assert status == 403
                status, _, _ = await post(f"/whip/{session.id}", vp8, token="tdu_forged")
                assert status == 401
                status, text, _ = await post(f"/whep/{session.id}", vp8)
                assert status == 409  # no media on the bridge yet

                # a send-only WHIP client (as OBS is) joins with the leader's token
                pc, obs = await offer(h264=False, direction="sendonly")
                pcs.append(pc)
                status, answer, location = await post(f"/whip/{session.id}", obs)
                assert status == 201, answer
                assert location.startswith(f"/whip/{session.id}/")
                media = c.bridge.session(session.id)
                assert media is not None
                assert "web-lanhdao" in [t.device for t in media.layout().tiles]
                stills = []
                for _ in range(2):  # the live view's still of the composed picture
                    async with http.get(f"/sessions/{session.id}/preview.jpg",
                                        headers=auth(leader)) as reply:
                        assert reply.status == 200
                        assert reply.headers["Content-Type"] == "image/jpeg"
                        stills.append(await reply.read())
                with Image.open(io.BytesIO(stills[0])) as image:
                    assert image.size == (640, 360)
                assert stills[0] == stills[1]  # shared, not a key frame per request
                async with http.patch(location, headers=auth(leader)) as reply:
                    assert reply.status == 405
                async with http.delete(location, headers=auth(archivist)) as reply:
                    assert reply.status == 403
                async with http.delete(location, headers=auth(leader)) as reply:
                    assert reply.status == 200
                assert "web-lanhdao" not in [t.device for t in media.layout().tiles]
                async with http.delete(location, headers=auth(leader)) as reply:
                    assert reply.status == 404

                # WHEP: a viewer gets an answer without becoming a tile
                pc, viewer = await offer(h264=True, direction="recvonly")
                pcs.append(pc)
                status, answer, location = await post(f"/whep/{session.id}", viewer,
                                                      token=archivist)
                assert status == 201 and "H264" in answer
                assert [t.device for t in media.layout().tiles] == []
                async with http.delete(location, headers=auth(archivist)) as reply:
                    assert reply.status == 200

                await c.sessions.end(session.id, "test")
                pc, late = await offer(h264=True)
                pcs.append(pc)
                status, _, _ = await post(f"/whip/{session.id}", late)
                assert status == 409
        finally:
            for pc in pcs:
                await close_quietly(pc)
        joins = [e for e in c.people.audit.recent() if e.action == "session.join"]
        assert [e.user for e in joins] == ["lanhdao"]
