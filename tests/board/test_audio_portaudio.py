"""The PortAudio backend on a host without a sound card.

ALSA's `file` plugin stands in for the speakerphone: a test-local ~/.asoundrc defines a capture
device that plays a raw file into PortAudio and a playback device that writes what PortAudio
plays into another file. Everything above ALSA (PortAudio, PyAudio, our backend) is real.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from tiepdan.board.audio import open_microphone, open_speaker
from tiepdan.board.audio.portaudio import PortAudioMicrophone, PortAudioSpeaker
from tiepdan.board.audio.synthetic import dominant_tones
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import AudioSpec, BoardProfile
from tiepdan.board.selftest import run_selftest

pytest.importorskip("pyaudio")

RATE = 48000
ASOUNDRC = """
pcm.tiepdan_capture {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.tiepdan_playback {{
    type file
    slave.pcm "null"
    file "{outfile}"
    format "raw"
}}
"""


@dataclass
class FakeCard:
    captured: np.ndarray  # what the "microphone" hears
    played: Path  # where the "speaker" output lands
    spec: AudioSpec


@pytest.fixture
def card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCard:
    home = tmp_path / "home"
    home.mkdir()
    infile, outfile = tmp_path / "in.raw", tmp_path / "out.raw"
    t = np.arange(2 * RATE) / RATE
    captured = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    captured.tofile(infile)
    (home / ".asoundrc").write_text(ASOUNDRC.format(infile=infile, outfile=outfile))
    monkeypatch.setenv("HOME", str(home))
    return FakeCard(captured, outfile, AudioSpec("pyaudio", "tiepdan_capture", "tiepdan_playback"))


def s16(samples: np.ndarray) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    return frame


async def test_microphone_reads_the_device(card: FakeCard) -> None:
    microphone = open_microphone(card.spec, label="box")
    assert isinstance(microphone, PortAudioMicrophone)
    async with microphone:
        frames = [await microphone.read() for _ in range(10)]
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    assert {(f.format.name, f.layout.name, f.sample_rate, f.samples) for f in frames} == {
        ("s16", "mono", RATE, 960)
    }
    heard = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(heard, card.captured[: heard.size])


async def test_speaker_plays_to_the_device(card: FakeCard) -> None:
    speaker = open_speaker(card.spec)
    assert isinstance(speaker, PortAudioSpeaker)
    played = (np.arange(10 * 960) - 4800).astype(np.int16)
    async with speaker:
        for chunk in played.reshape(10, 960):
            await speaker.write(s16(chunk))
    out = np.fromfile(card.played, dtype="<i2")
    assert np.array_equal(out[: played.size], played)
    assert not out[played.size :].any()  # at most silence after it


async def test_speaker_converts_to_the_device_format(card: FakeCard) -> None:
    t = np.arange(44100) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 750 * t)).astype(np.float32)
    async with open_speaker(card.spec) as speaker:
        for start in range(0, 44100, 882):
            frame = av.AudioFrame.from_ndarray(
                np.repeat(tone[start : start + 882], 2).reshape(1, -1),
                format="flt",
                layout="stereo",
            )
            frame.sample_rate = 44100
            await speaker.write(frame)
    out = np.fromfile(card.played, dtype="<i2")
    assert dominant_tones(out[: RATE // 2], RATE) == pytest.approx([750.0], abs=2.0)


async def test_device_names_match_by_substring(card: FakeCard) -> None:
    spec = dataclasses.replace(card.spec, input_device="TIEPDAN_CAP")
    async with open_microphone(spec, label="box") as microphone:
        frame = await microphone.read()
    assert np.array_equal(frame.to_ndarray().reshape(-1), card.captured[:960])


async def test_missing_device_names_it_and_lists_the_others(card: FakeCard) -> None:
    spec = dataclasses.replace(card.spec, input_device="Jabra SPEAK 510")
    microphone = open_microphone(spec, label="box")
    with pytest.raises(
        BoardError, match="no audio input device matching 'Jabra SPEAK 510'"
    ) as info:
        await microphone.start()
    assert "tiepdan_capture" in str(info.value)


async def test_read_before_start_is_an_error(card: FakeCard) -> None:
    with pytest.raises(BoardError, match="not started"):
        await open_microphone(card.spec, label="box").read()


async def test_selftest_on_real_audio_devices(card: FakeCard, sim: BoardProfile) -> None:
    profile = dataclasses.replace(sim, audio=card.spec)
    report = await run_selftest(profile, None, label="box")
    assert report.part("microphone").ok, report.part("microphone").detail
    assert report.part("speaker").ok, report.part("speaker").detail
    assert report.ok
    played = np.fromfile(card.played, dtype="<i2")
    assert played.size >= RATE // 10 and not played.any()  # 100 ms of silence
