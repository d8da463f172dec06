"""The box's sounds: the invitation chime, join and leave tones, mute on and off.

Synthesised with numpy (no audio files to ship or license): short sine notes with 8 ms fades so
nothing clicks, at the configured volume (0-100, a perceptual curve: 50 is about -12 dB). Each
sound is told apart by its notes alone, so a hall learns them without reading the screen:
the chime is a two-note doorbell, joining rises, leaving falls, mute falls low, unmute rises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from tiepdan.board.audio import Pcm, Speaker
from tiepdan.board.errors import BoardError

__all__ = ["NOTES", "Sound", "Sounds", "synthesise"]

log = logging.getLogger(__name__)

Sound = Literal["chime", "join", "leave", "mute_on", "mute_off"]

# (frequency in Hz, seconds); 0 Hz is a rest.
NOTES: dict[Sound, tuple[tuple[float, float], ...]] = {
    "chime": ((988.0, 0.28), (784.0, 0.45), (0.0, 0.12), (988.0, 0.28), (784.0, 0.45)),
    "join": ((523.0, 0.11), (659.0, 0.11), (784.0, 0.22)),
    "leave": ((784.0, 0.11), (659.0, 0.11), (523.0, 0.22)),
    "mute_on": ((494.0, 0.10), (330.0, 0.16)),
    "mute_off": ((330.0, 0.10), (494.0, 0.16)),
}
FADE_S = 0.008
FULL_SCALE = 0.6  # of int16 at volume 100: headroom for the speakerphone's amplifier


def gain(volume: int) -> float:
    """0-100 to a linear gain; 0 is silence, 100 is full scale, 50 about a quarter."""
    volume = min(100, max(0, volume))
    return 0.0 if volume == 0 else FULL_SCALE * (volume / 100) ** 2


def synthesise(sound: Sound, rate: int, volume: int) -> Pcm:
    """The sound's samples, s16 mono at `rate`."""
    parts = []
    fade = max(1, round(FADE_S * rate))
    for hz, seconds in NOTES[sound]:
        n = round(seconds * rate)
        if hz == 0:
            parts.append(np.zeros(n))
            continue
        wave = np.sin(2 * np.pi * hz * np.arange(n) / rate)
        # A touch of the octave makes small speakers sound less thin.
        wave = 0.8 * wave + 0.2 * np.sin(4 * np.pi * hz * np.arange(n) / rate)
        envelope = np.ones(n)
        envelope[:fade] = np.linspace(0, 1, fade)
        envelope[-fade:] = np.linspace(1, 0, fade)
        parts.append(wave * envelope)
    samples = np.concatenate(parts) * gain(volume) * 32767
    return samples.astype(np.int16)


class Sounds:
    """Plays one sound at a time on a speaker of its own; a broken speaker is logged, not fatal.

    The speaker is opened and started on first use and kept. On a box the output is the system's
    default device, which PipeWire (or ALSA's dmix) mixes with the call's audio.
    """

    def __init__(self, open_speaker: Callable[[], Speaker], volume: int) -> None:
        self._open = open_speaker
        self.volume = volume
        self.speaker: Speaker | None = None
        self.played: list[Sound] = []  # what was played, newest last (status and tests)
        self._lock = asyncio.Lock()
        self._failed = False

    async def play(self, sound: Sound) -> None:
        """Play `sound` to its end (returns after it has been heard)."""
        if self.volume <= 0:
            return
        async with self._lock:
            try:
                speaker = await self._speaker()
                pcm = synthesise(sound, speaker.rate, self.volume)
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16",
                                                   layout="mono")
                frame.sample_rate = speaker.rate
                frame.pts = 0
                frame.time_base = Fraction(1, speaker.rate)
                await speaker.write(frame)
                self._failed = False
            except (BoardError, OSError) as exc:
                if not self._failed:
                    log.error("sound_failed sound=%s error=%s", sound, exc)
                self._failed = True
                return
            self.played.append(sound)
            del self.played[:-32]
            log.debug("sound_played sound=%s volume=%d", sound, self.volume)
            await asyncio.sleep(pcm.size / speaker.rate)

    async def _speaker(self) -> Speaker:
        if self.speaker is None:
            speaker = self._open()
            await speaker.start()
            self.speaker = speaker
        return self.speaker

    async def close(self) -> None:
        if self.speaker is not None:
            speaker, self.speaker = self.speaker, None
            try:
                await speaker.stop()
            except (BoardError, OSError) as exc:
                log.warning("speaker_stop_failed error=%s", exc)
