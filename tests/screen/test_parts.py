"""The screen's parts on their own: layouts at every mode, the in-call renderer with odd frames,
sounds and volume, office hours and CEC, upload progress from a real signed manifest."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.board.audio.synthetic import dominant_tones
from tiepdan.board.camera.tag import Tag, encode_tag, read_tag
from tiepdan.firmware.evidence.manifest import Manifest, Segment
from tiepdan.firmware.screen.care import Cec, OfficeHours, apply_level
from tiepdan.firmware.screen.catalog import screen_translator
from tiepdan.firmware.screen.fonts import font_path
from tiepdan.firmware.screen.progress import upload_percent
from tiepdan.firmware.screen.render import CallRenderer, fit
from tiepdan.firmware.screen.screens import Layouts
from tiepdan.firmware.screen.sounds import NOTES, gain, synthesise
from tiepdan.firmware.screen.state import NextSession, ScreenState
from tiepdan.tools.screenshots import states

MODES = [(1280, 720), (1920, 1080), (1024, 768), (720, 480)]


def test_a_font_with_vietnamese_is_installed() -> None:
    for weight in ("regular", "bold", "mono"):
        path = font_path(weight)  # type: ignore[arg-type]
        assert path is not None, f"no {weight} font: apt install fonts-dejavu-core"


@pytest.mark.parametrize("mode", MODES)
def test_every_screen_draws_at_every_mode_in_both_languages(mode: tuple[int, int]) -> None:
    for language in ("vi", "en"):
        layouts = Layouts(mode, screen_translator(language))
        for name, state in states().items():
            if state.kind == "call":
                continue
            image = layouts.draw(state)
            assert image.size == mode, name
            pixels = np.asarray(image)
            assert pixels.std() > 5, f"{name} at {mode} is blank"


def test_the_countdown_reads_as_people_say_it() -> None:
    layouts = Layouts((1280, 720), screen_translator("vi"))
    now = datetime(2026, 12, 3, 7, 45)
    assert layouts.countdown(now, now + timedelta(minutes=75)) == "còn 1 giờ 15 phút"
    assert layouts.countdown(now, now + timedelta(minutes=9, seconds=10)) == "còn 10 phút"
    assert layouts.countdown(now, now + timedelta(days=2, hours=3)) == "còn 2 ngày 3 giờ"
    assert layouts.countdown(now, now - timedelta(minutes=3)) == "sắp bắt đầu"
    english = Layouts((1280, 720), screen_translator("en"))
    assert english.countdown(now, now + timedelta(minutes=75)) == "in 1 h 15 min"
    assert english.date(now) == "Thursday, 03/12/2026"
    assert layouts.date(now) == "Thứ Năm, 03/12/2026"


def test_fit_letterboxes_and_pillarboxes() -> None:
    assert fit((1280, 720), (1920, 1080)).__dict__ == {"x": 0, "y": 0, "width": 1920,
                                                       "height": 1080}
    box = fit((1280, 720), (1024, 768))
    assert (box.x, box.y, box.width, box.height) == (0, 96, 1024, 576)
    tall = fit((640, 480), (1280, 720))
    assert (tall.x, tall.y, tall.width, tall.height) == (160, 0, 960, 720)


def tagged_frame(width: int, height: int) -> av.VideoFrame:
    yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    yuv[:height] = 60
    encode_tag(Tag(0xBEEF, 7, 1234), yuv[:height])
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def test_the_renderer_shows_the_picture_and_survives_frames_of_any_size() -> None:
    layouts = Layouts((1024, 768), screen_translator("vi"))
    renderer = CallRenderer((1024, 768), layouts)
    state = ScreenState(kind="call", hall="h", commune="", device="d", now=datetime.now(),
                        muted=True, recording=True, quality="poor")
    frame = renderer.compose(tagged_frame(1280, 720), None, state)
    place = renderer.placement
    assert place is not None and (place.y, place.height) == (96, 576)
    luma = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    tag = read_tag(luma[place.y:place.y + place.height])
    assert tag == Tag(0xBEEF, 7, 1234)
    assert not frame[: place.y, 640:880].any(), "the bar above the picture is not black"
    # Badges come off when their reason does, also from the bars no picture repaints.
    assert frame[672:, 300:600].any()
    unmuted = ScreenState(**{**state.__dict__, "muted": False, "recording": False})
    frame = renderer.compose(None, None, unmuted)
    assert not frame[672:, 300:600].any(), "the mute badge stayed in the bar"
    # A 4:3 picture next: pillarboxed, and no trace of the 16:9 one left in the bars.
    frame = renderer.compose(tagged_frame(640, 480), None, state)
    assert renderer.placement is not None and renderer.placement.x == 0
    frame = renderer.compose(tagged_frame(320, 720), None, state)
    assert renderer.placement is not None and renderer.placement.x > 300
    assert not frame[400:600, :200].any(), "an old picture is left in the side bar"
    # Frames that cannot be shown are dropped and counted; the last good one stays.
    before = frame.copy()
    renderer.compose(tagged_frame(8, 8), None, state)
    assert renderer.dropped == 1
    assert np.array_equal(renderer.buffer, before)
    # Self-view, with a frame of its own size.
    renderer.compose(None, tagged_frame(320, 180), state)
    at = renderer.self_view_at
    assert at is not None and at.x + at.width < 1024 and at.y + at.height < 768


def test_sounds_are_their_notes_at_the_configured_volume() -> None:
    chime = synthesise("chime", 48000, 70)
    tones = dominant_tones(chime, 48000)
    assert any(abs(t - 988) < 10 for t in tones) and any(abs(t - 784) < 10 for t in tones)
    assert len(chime) == round(sum(s for _, s in NOTES["chime"]) * 48000)
    loud, quiet = synthesise("join", 48000, 100), synthesise("join", 48000, 30)
    assert np.abs(loud).max() > 4 * np.abs(quiet).max() > 0
    assert not synthesise("mute_on", 48000, 0).any()
    assert gain(100) == pytest.approx(0.6) and gain(-5) == 0 and gain(500) == gain(100)
    start = synthesise("mute_on", 48000, 100)[:5]
    assert np.abs(start).max() < 2000, "no fade in: the tone would click"


def test_office_hours_dim_and_blank() -> None:
    hours = OfficeHours("07:00-17:30", [1, 2, 3, 4, 5], "dim", 0.25)
    thursday = datetime(2026, 12, 3)
    assert hours.level(thursday.replace(hour=8)) == "on"
    assert hours.level(thursday.replace(hour=17, minute=30)) == "dim"
    assert hours.level(thursday.replace(hour=6, minute=59)) == "dim"
    assert hours.level(datetime(2026, 12, 6, 9)) == "dim"  # Sunday
    night = OfficeHours("22:00-06:00", [1, 2, 3, 4, 5, 6, 7], "blank", 0.25)
    assert night.level(thursday.replace(hour=23)) == "on"
    assert night.level(thursday.replace(hour=12)) == "blank"
    assert OfficeHours("", [], "blank", 0.25).level(thursday) == "on"
    frame = np.full((4, 4, 3), 200, dtype=np.uint8)
    assert apply_level(frame, "on", 0.25) is frame
    assert apply_level(frame, "dim", 0.25).max() == 50
    assert not apply_level(frame, "blank", 0.25).any()


async def test_cec_failures_are_reported_not_raised(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cec = Cec("/dev/cec0", program="tiepdan-no-such-cec-ctl")
    assert not await cec.power(False)
    assert cec.error is not None and "not found" in cec.error
    # A cec-ctl that exits non-zero, as it does without a CEC adapter.
    fake = tmp_path / "cec-ctl"
    fake.write_text("#!/bin/sh\necho 'cannot open /dev/cec0' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cec = Cec("/dev/cec0")
    assert not await cec.power(True)
    assert cec.error is not None and "cannot open /dev/cec0" in cec.error
    assert cec.powered is None


def test_upload_progress_comes_from_the_signed_manifest(tmp_path: Path) -> None:
    directory = tmp_path / "s-1"
    assert upload_percent(directory) is None
    manifest = Manifest(directory / "manifest.jsonl", device="box", session="s-1",
                        key=Ed25519PrivateKey.generate(), boot_id="b", clock_synced=lambda: True)
    manifest.append("start")
    assert upload_percent(directory) is None
    for i in range(4):
        manifest.append("segment", segment=Segment(
            name=f"{i:06d}.mkv.age", index=i, ct_sha256="0" * 64, ct_size=1,
            pt_sha256="0" * 64, pt_size=1, start_utc_ms=0, duration_ms=2000))
    assert upload_percent(directory) == 0
    manifest.append("uploaded", detail={"name": "000000.mkv.age"})
    manifest.append("uploaded", detail={"name": "000001.mkv.age"})
    manifest.append("uploaded", detail={"name": "000001.mkv.age"})  # a repeat counts once
    assert upload_percent(directory) == 50
    with open(directory / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"torn')  # a line being written right now
    assert upload_percent(directory) == 50
    # A checked receipt counts before its `uploaded` record can be written.
    (directory / "receipts.jsonl").write_text(
        '{"receipt": {"name": "000002.mkv.age"}, "verified_utc_ms": 1}\n{"rece')
    assert upload_percent(directory) == 75
    manifest.close()


def test_next_session_state_is_plain_data() -> None:
    at = datetime(2026, 12, 3, 9)
    assert NextSession(at=at) == NextSession(at=at, title="", host_name="")


def test_the_renderer_shares_no_swscale_context_with_the_recorder() -> None:
    """The recorder rescales the same received frames on its own thread. Through the frame's
    own cached reformatter (`to_ndarray(width=...)`) the two threads deadlocked within seconds
    (seen in the demo); the renderer keeps a reformatter of its own."""
    import threading
    import time

    pictures = [tagged_frame(1280, 720) for _ in range(4)]
    renderer = CallRenderer((1280, 720), Layouts((1280, 720), screen_translator("vi")))
    state = ScreenState(kind="call", hall="h", commune="", device="d", now=datetime.now())
    deadline = time.monotonic() + 2.0
    composed = [0]

    def recorder() -> None:
        while time.monotonic() < deadline:
            for frame in pictures:
                frame.reformat(width=640, height=360, format="yuv420p")

    def screen() -> None:
        while time.monotonic() < deadline:
            for frame in pictures:
                renderer.compose(frame, None, state)
                composed[0] += 1

    threads = [threading.Thread(target=t, daemon=True) for t in (recorder, screen)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads), "renderer and recorder deadlocked"
    assert composed[0] > 10
