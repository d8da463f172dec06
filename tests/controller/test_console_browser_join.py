"""A leader joins a live session of simulated boxes from Chromium, through WHIP to the bridge.

Chromium's fake camera plays a clip tagged with the leader's label and its fake microphone a
tone: the boxes' tag reading proves they see the leader's tile, their speakers that they hear
the leader. The browser proves it receives the composed picture (the boxes' tags read back
from a canvas, and a frame count that keeps growing) and hears the boxes but not itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller.console_support import PASSWORD, add_people
from tests.sessions.points import BRIDGE, hashes, heard, latest_picture, points, tags_seen
from tests.support import eventually, make_controller_config, running_controller
from tiepdan.board.audio.synthetic import TONES, tone_for
from tiepdan.board.camera.tag import read_tag
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.chromium import Chromium, write_tone, write_y4m

pytestmark = pytest.mark.timeout(240)

DEVICES = ["pt-host", "pt-1"]
LEADER = "lanhdao"
POINT = "web-lanhdao"
LABEL = "Lãnh đạo tỉnh"
# The leader's microphone: a tone no box uses.
LEADER_TONE = next(t for t in TONES if all(abs(t - tone_for(d)) > 50 for d in DEVICES))


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("aioice.ice.get_host_addresses",
                        lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
    yield


async def test_leader_joins_from_chromium_and_everyone_sees_and_hears(
        tmp_path: Path, broker: Mosquitto) -> None:
    camera, microphone = tmp_path / "leader.y4m", tmp_path / "leader.wav"
    leader_hash = write_y4m(camera, LABEL)
    write_tone(microphone, LEADER_TONE)
    config = make_controller_config(tmp_path, broker, bridge=BRIDGE,
                                    sessions={"invite_timeout": 5.0})
    async with running_controller(config) as c, points(tmp_path, broker, DEVICES) as agents, \
            Chromium(tmp_path, camera=camera, microphone=microphone) as browser:
        add_people(c)
        base = f"http://127.0.0.1:{c.http_port}"
        await eventually(lambda: all(c.registry.get(d) for d in DEVICES), 10)
        session = await c.sessions.open("pt-host", DEVICES[1:], auto_join=True)
        await eventually(lambda: all(a.call.state == "live" for a in agents.values()), 30,
                         what="every box live")
        await browser.login(base, LEADER, PASSWORD)
        await browser.get(f"{base}/sessions/{session.id}")
        assert "Tham gia bằng camera và micrô" in await browser.js(
            "return document.body.innerText")
        await browser.click("join-button")

        async def frames() -> int:
            return int(await browser.js("return window.tiepdanJoin ? "
                                        "window.tiepdanJoin.frames : 0") or 0)
        await eventually(lambda: _positive(frames), 30, what="composed frames in the browser")
        first = await frames()
        await asyncio.sleep(2)
        assert await frames() > first + 5, "the browser's decoded frames stopped growing"

        # every box sees the leader's tile and hears the leader
        expected = hashes(DEVICES)
        for device, agent in agents.items():
            async def sees_leader(agent: object = agent) -> bool:
                seen = tags_seen(agent, await latest_picture(agent))  # type: ignore[arg-type]
                return seen.get(POINT) == leader_hash
            await eventually(sees_leader, 20, what=f"{device} seeing the leader")
            await eventually(
                lambda agent=agent: any(abs(f - LEADER_TONE) < 8  # type: ignore[misc]
                                        for f in heard(agent)),
                10, what=f"{device} hearing the leader")

        # the browser sees the boxes in the composed picture, tile by tile
        media = c.bridge.session(session.id)
        assert media is not None

        async def browser_sees_boxes() -> bool:
            luma = await browser.luma("composed")
            if luma is None:
                return False
            layout = media.layout()
            found = {}
            for tile in layout.tiles:
                tag = read_tag(luma[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width])
                if tag is not None:
                    found[tile.device] = tag.label_hash
            return all(found.get(d) == expected[d] for d in DEVICES)
        await eventually(browser_sees_boxes, 20, what="the boxes' tags in the browser")

        # the browser hears the boxes, not itself (mix-minus)
        async def browser_hears_boxes() -> bool:
            heard = await browser.tones("mix", 1.5)
            return all(any(abs(f - tone_for(d)) < 12 for f in heard) for d in DEVICES)
        await eventually(browser_hears_boxes, 20, what="the boxes' tones in the browser")
        tones = await browser.tones("mix", 1.5)
        assert tones, "the browser hears nothing"
        assert not any(abs(f - LEADER_TONE) < 12 for f in tones), f"hears itself: {tones}"

        # leaving drops the tile for everyone
        await browser.click("leave-button")
        await eventually(lambda: POINT not in [t.device for t in media.layout().tiles], 10,
                         what="the leader's tile gone")
        assert any(e.action == "session.join" and e.user == LEADER
                   for e in c.people.audit.recent())

        # watching only (WHEP): the composed picture arrives, and the leader is no tile
        await browser.get(f"{base}/sessions/{session.id}")
        await browser.click("watch-button")
        await eventually(lambda: _positive(frames), 30, what="frames while watching")
        await eventually(browser_sees_boxes, 20, what="the boxes' tags while watching")
        assert POINT not in [t.device for t in media.layout().tiles]


async def _positive(read: object) -> bool:
    return bool(await read())  # type: ignore[operator]
