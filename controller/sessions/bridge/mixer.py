"""Audio mix-minus: every point hears the sum of the others, never itself.

Each point's decoded audio goes into its own short FIFO (mono, s16, 48 kHz); every 20 ms the
mixer takes one frame from each, adds them once (int32, no clipping until the end), and gives
each point the total minus its own part. A FIFO refills to `PREBUFFER` after running dry, so
network jitter costs a short gap rather than crackle, and is trimmed to `MAX_BACKLOG` so a
burst never turns into lasting delay. The loudest point (smoothed, with a hold time so the
frame around its tile does not flicker) is the active speaker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.audio.resampler
import numpy as np
import numpy.typing as npt

RATE = 48000
FRAME = 960  # 20 ms
TIME_BASE = Fraction(1, RATE)
PREBUFFER = 2 * FRAME
MAX_BACKLOG = 10 * FRAME
SPEAKER_THRESHOLD = 300.0  # RMS of s16 samples, about -40 dBFS
SPEAKER_HOLD_S = 1.0
LEVEL_SMOOTHING = 0.7

Samples = npt.NDArray[np.int16]


@dataclass
class _Input:
    resampler: av.audio.resampler.AudioResampler = field(
        default_factory=lambda: av.audio.resampler.AudioResampler(format="s16", layout="mono",
                                                                 rate=RATE))
    fifo: Samples = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    buffering: bool = True
    level: float = 0.0


class Mixer:
    def __init__(self) -> None:
        self._inputs: dict[str, _Input] = {}
        self.speaker: str | None = None
        self._speaker_since = 0.0
        self.underruns = 0

    def add(self, key: str) -> None:
        self._inputs.setdefault(key, _Input())

    def remove(self, key: str) -> None:
        self._inputs.pop(key, None)
        if self.speaker == key:
            self.speaker = None

    def push(self, key: str, frame: av.AudioFrame) -> None:
        source = self._inputs.get(key)
        if source is None:
            return
        chunks = [f.to_ndarray().reshape(-1) for f in source.resampler.resample(frame)]
        if not chunks:
            return
        fifo = np.concatenate([source.fifo, *chunks]).astype(np.int16, copy=False)
        source.fifo = fifo[-MAX_BACKLOG:]

    def mix(self) -> tuple[Samples, dict[str, Samples]]:
        """One 20 ms step: the full mix, and each input's mix-minus."""
        parts: dict[str, npt.NDArray[np.int32]] = {}
        for key, source in self._inputs.items():
            if source.buffering and source.fifo.size >= PREBUFFER:
                source.buffering = False
            if source.buffering or source.fifo.size < FRAME:
                if not source.buffering:
                    self.underruns += 1
                source.buffering = True
                chunk = np.zeros(FRAME, dtype=np.int32)
            else:
                chunk = source.fifo[:FRAME].astype(np.int32)
                source.fifo = source.fifo[FRAME:]
            rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
            source.level = LEVEL_SMOOTHING * source.level + (1 - LEVEL_SMOOTHING) * rms
            parts[key] = chunk
        total = np.zeros(FRAME, dtype=np.int32)
        for chunk in parts.values():
            total += chunk
        minus = {key: _clip(total - chunk) for key, chunk in parts.items()}
        self._pick_speaker()
        return _clip(total), minus

    def _pick_speaker(self) -> None:
        now = time.monotonic()
        levels = {k: s.level for k, s in self._inputs.items()}
        loudest = max(levels, key=levels.__getitem__, default=None)
        if loudest is None or levels[loudest] < SPEAKER_THRESHOLD:
            if self.speaker is not None and levels.get(self.speaker, 0.0) < SPEAKER_THRESHOLD \
                    and now - self._speaker_since > SPEAKER_HOLD_S:
                self.speaker = None
            return
        current = levels.get(self.speaker, 0.0) if self.speaker else 0.0
        if loudest != self.speaker and now - self._speaker_since > SPEAKER_HOLD_S and \
                levels[loudest] > 1.5 * current:
            self.speaker, self._speaker_since = loudest, now


def _clip(samples: npt.NDArray[np.int32]) -> Samples:
    return np.clip(samples, -32768, 32767).astype(np.int16)


def to_frame(samples: Samples, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame
