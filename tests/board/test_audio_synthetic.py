from __future__ import annotations

import asyncio
import itertools
from fractions import Fraction

import av
import numpy as np
import pytest

from tiepdan.board.audio import open_microphone, open_speaker
from tiepdan.board.audio.synthetic import (
    TONES,
    RingSpeaker,
    ToneMicrophone,
    dominant_tones,
    tone_for,
)
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import AudioSpec, BoardProfile

RATE = 48000
SPEC = AudioSpec("synthetic", "tone", "ring")


async def record(label: str, frames: int, tone_hz: float | None = None) -> np.ndarray:
    async with open_microphone(SPEC, label=label, tone_hz=tone_hz) as microphone:
        got = [await microphone.read() for _ in range(frames)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in got])


def test_tone_table_is_well_separated() -> None:
    assert len(TONES) >= 16
    assert all(300 <= f <= 3400 for f in TONES)
    ordered = sorted(TONES)
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= 100
    for low in TONES:
        for high in TONES:
            for k in range(2, 13):
                assert abs(high - k * low) >= 30, (low, high, k)


def test_tones_are_deterministic_and_numbered_fleets_never_collide() -> None:
    assert tone_for("Xã Hưng Nguyên") == tone_for("Xã Hưng Nguyên")
    assert tone_for("Xã Hưng Nguyên") in TONES
    fleet = [tone_for(f"sim-{i:02d}") for i in range(1, len(TONES) + 1)]
    assert len(set(fleet)) == len(TONES)


async def test_microphone_frames_follow_aiortc_conventions(sim: BoardProfile) -> None:
    microphone = open_microphone(sim.audio, label="sim-01")
    assert isinstance(microphone, ToneMicrophone)
    async with microphone:
        frames = [await microphone.read() for _ in range(3)]
    for frame in frames:
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.sample_rate == RATE
        assert frame.samples == 960
        assert frame.time_base == Fraction(1, RATE)
    assert [f.pts for f in frames] == [0, 960, 1920]


async def test_fft_hears_the_points_tone() -> None:
    samples = await record("sim-03", frames=25)  # half a second
    (heard,) = dominant_tones(samples, RATE)
    assert heard == pytest.approx(tone_for("sim-03"), abs=1.0)


async def test_mixed_points_are_told_apart() -> None:
    labels = ["sim-01", "sim-02", "sim-05"]
    recordings = await asyncio.gather(*(record(label, frames=25) for label in labels))
    mix = np.sum([r.astype(np.int32) for r in recordings], axis=0)
    heard = dominant_tones(mix, RATE)
    assert heard == pytest.approx(sorted(tone_for(label) for label in labels), abs=1.0)


async def test_explicit_tone_overrides_the_label() -> None:
    samples = await record("whatever", frames=25, tone_hz=1000.0)
    assert dominant_tones(samples, RATE) == pytest.approx([1000.0], abs=1.0)


def test_silence_and_short_input_have_no_tones() -> None:
    assert dominant_tones(np.zeros(48000, dtype=np.int16), RATE) == []
    assert dominant_tones(np.ones(4, dtype=np.int16), RATE) == []


def test_tone_outside_the_band_is_refused() -> None:
    with pytest.raises(BoardError, match="outside"):
        ToneMicrophone(SPEC, tone_hz=30000)


async def test_read_before_start_is_an_error() -> None:
    with pytest.raises(BoardError, match="not started"):
        await open_microphone(SPEC, label="x").read()


def frame(samples: np.ndarray, *, rate: int = RATE, layout: str = "mono") -> av.AudioFrame:
    fmt = "flt" if samples.dtype == np.float32 else "s16"
    out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=fmt, layout=layout)
    out.sample_rate = rate
    return out


async def test_speaker_keeps_what_it_played() -> None:
    speaker = open_speaker(SPEC)
    assert isinstance(speaker, RingSpeaker)
    played = np.arange(5 * 960, dtype=np.int16)
    async with speaker:
        for chunk in played.reshape(5, 960):
            await speaker.write(frame(chunk))
    assert np.array_equal(speaker.samples(), played)
    assert np.array_equal(speaker.samples(seconds=0.02), played[-960:])
    assert speaker.total_samples == played.size


async def test_speaker_ring_keeps_only_the_newest_seconds() -> None:
    speaker = RingSpeaker(SPEC, keep_seconds=0.05)  # 2400 samples
    played = (np.arange(7 * 960) % 30000).astype(np.int16)
    async with speaker:
        for chunk in played.reshape(7, 960):
            await speaker.write(frame(chunk))
        await speaker.write(frame(np.arange(3000, dtype=np.int16)))  # more than the ring holds
    assert np.array_equal(speaker.samples(), np.arange(600, 3000, dtype=np.int16))
    assert speaker.total_samples == played.size + 3000
    speaker.clear()
    assert speaker.samples().size == 0


async def test_speaker_converts_other_formats() -> None:
    # What an Opus decoder hands over: stereo at 48 kHz, or another rate and float samples.
    t = np.arange(44100) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 650 * t)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1).reshape(1, -1)
    speaker = RingSpeaker(SPEC)
    async with speaker:
        for start in range(0, 44100, 882):
            await speaker.write(
                frame(stereo[:, 2 * start : 2 * (start + 882)], rate=44100, layout="stereo")
            )
    heard = speaker.samples()
    assert abs(heard.size - RATE) < 2000  # about a second at the speaker's own rate
    assert dominant_tones(heard, RATE) == pytest.approx([650.0], abs=2.0)


async def test_speaker_must_be_started() -> None:
    with pytest.raises(BoardError, match="not started"):
        await RingSpeaker(SPEC).write(frame(np.zeros(960, dtype=np.int16)))
