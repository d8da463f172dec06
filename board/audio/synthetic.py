"""Audio for boxes without a sound card: every point hums its own tone, every speaker remembers.

A multi-point test then needs no human ear: the FFT of what a speaker got says which points
it hears. The tones are far enough apart, and off each other's harmonics, that a clipped or
mixed signal is never mistaken for another point.
"""

from __future__ import annotations

import logging
import re

import av
import numpy as np
import numpy.typing as npt

from tiepdan.board.audio import Microphone, Pcm, Speaker
from tiepdan.board.camera.tag import label_hash
from tiepdan.board.errors import BoardError
from tiepdan.board.pacing import Pacer
from tiepdan.board.profile import AudioSpec

__all__ = ["TONES", "RingSpeaker", "ToneMicrophone", "dominant_tones", "tone_for"]

log = logging.getLogger(__name__)

# 300-3400 Hz (survives even a narrowband codec), >= 100 Hz apart, and no tone within 30 Hz
# of another's 2nd..12th harmonic. tests/board checks these properties.
TONES: tuple[float, ...] = (
    310.0, 410.0, 510.0, 650.0, 750.0, 850.0, 960.0, 1060.0, 1160.0, 1270.0, 1370.0, 1470.0,
    1580.0, 1730.0, 1830.0, 1980.0, 2080.0, 2200.0, 2350.0, 2510.0, 2630.0, 2820.0, 2970.0,
    3130.0, 3310.0,
)  # fmt: skip
AMPLITUDE = 0.25  # of full scale: loud enough to measure, room to mix several without clipping
KEEP_SECONDS = 10.0


def tone_for(label: str) -> float:
    """The tone of a point, the same on every run.

    A numbered fleet ("sim-01", "sim-02", ...) gets consecutive tones, so up to len(TONES)
    points that share a prefix never collide; the prefix picks where the run starts.
    """
    match = re.fullmatch(r"(.*?)(\d+)", label)
    if match is None:
        return TONES[label_hash(label) % len(TONES)]
    prefix, number = match.groups()
    return TONES[(label_hash(prefix) + int(number)) % len(TONES)]


def dominant_tones(
    samples: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    rate: int,
    *,
    floor: float = 0.1,
    limit: int = 16,
) -> list[float]:
    """Frequencies (Hz, ascending) of the spectral peaks above `floor` times the strongest one.

    A Hann window keeps side lobes at -31 dB, below the default floor of -20 dB, so each tone
    yields one peak; parabolic interpolation gives sub-bin accuracy.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size < 16:
        return []
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    strongest = spectrum.max()
    if strongest <= 0:
        return []
    mid = spectrum[1:-1]
    peaks = np.flatnonzero(
        (mid > spectrum[:-2]) & (mid >= spectrum[2:]) & (mid > floor * strongest)
    )
    peaks = peaks[np.argsort(mid[peaks])[::-1][:limit]] + 1
    found = []
    for k in peaks:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0
        found.append(float((k + shift) * rate / x.size))
    return sorted(found)


class ToneMicrophone(Microphone):
    """A pure tone in real time; the phase follows the clock, so skipped frames leave no click."""

    def __init__(self, spec: AudioSpec, *, tone_hz: float) -> None:
        super().__init__(spec)
        if not 0 < tone_hz < spec.rate / 2:
            raise BoardError(f"tone {tone_hz} Hz is outside 0..{spec.rate / 2} Hz")
        self.tone_hz = tone_hz
        self._pacer: Pacer | None = None
        self._step = 2 * np.pi * tone_hz / spec.rate

    async def start(self) -> None:
        self._pacer = Pacer(1 / (self.samples_per_frame / self.rate))
        log.info("microphone_started backend=synthetic tone_hz=%.0f", self.tone_hz)

    async def stop(self) -> None:
        self._pacer = None

    async def read(self) -> av.AudioFrame:
        if self._pacer is None:
            raise BoardError("microphone is not started")
        first = await self._pacer.tick() * self.samples_per_frame
        n = np.arange(first, first + self.samples_per_frame, dtype=np.float64)
        wave = np.sin(n * self._step) * (AMPLITUDE * 32767)
        return self._frame(wave.astype(np.int16), first)


class RingSpeaker(Speaker):
    """Keeps the last `keep_seconds` of what it played, mono, for tests to analyse."""

    def __init__(self, spec: AudioSpec, *, keep_seconds: float = KEEP_SECONDS) -> None:
        super().__init__(spec)
        self._ring = np.zeros(round(keep_seconds * spec.rate), dtype=np.int16)
        self._end = 0  # samples ever written; the ring holds the newest ones
        self._running = False

    @property
    def total_samples(self) -> int:
        return self._end

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def _play(self, pcm: Pcm) -> None:
        if not self._running:
            raise BoardError("speaker is not started")
        mono = pcm if self.channels == 1 else pcm.reshape(-1, self.channels).mean(axis=1)
        size = self._ring.size
        keep = mono.astype(np.int16, copy=False)[-size:]
        start = (self._end + mono.size - keep.size) % size
        first = min(keep.size, size - start)
        self._ring[start : start + first] = keep[:first]
        self._ring[: keep.size - first] = keep[first:]
        self._end += mono.size

    def samples(self, seconds: float | None = None) -> Pcm:
        """The newest samples, oldest first (all kept ones, or the last `seconds`)."""
        size = self._ring.size
        held = min(self._end, size)
        if seconds is not None:
            held = min(held, round(seconds * self.rate))
        start = (self._end - held) % size
        return np.roll(self._ring, -start)[:held].copy()

    def clear(self) -> None:
        self._end = 0
