"""The audio seam: a microphone and a speaker, with PortAudio and synthetic backends.

Frames follow aiortc's conventions (20 ms, s16, pts counted in samples at the frame's rate),
so a microphone plugs straight into a `MediaStreamTrack` and a received track's frames can be
written to a speaker whatever their format.
"""

from __future__ import annotations

import abc
import logging
from fractions import Fraction

import av
import av.audio.resampler
import numpy as np
import numpy.typing as npt

from tiepdan.board.device import MediaDevice
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import AudioSpec

__all__ = ["FRAME_SECONDS", "Microphone", "Pcm", "Speaker", "open_microphone", "open_speaker"]

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02

Pcm = npt.NDArray[np.int16]


class Microphone(MediaDevice):
    """Yields s16 mono frames of 20 ms at `rate`; `read` never blocks the loop."""

    def __init__(self, spec: AudioSpec) -> None:
        self.spec = spec
        self.rate = spec.rate
        self.samples_per_frame = round(spec.rate * FRAME_SECONDS)
        self.time_base = Fraction(1, spec.rate)

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def read(self) -> av.AudioFrame:
        """The next 20 ms, with `pts` in samples."""

    def _frame(self, samples: Pcm, pts: int) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = pts
        frame.time_base = self.time_base
        return frame


class Speaker(MediaDevice):
    """Plays frames of any format; they are converted to s16 at the device's rate and channels."""

    def __init__(self, spec: AudioSpec) -> None:
        self.spec = spec
        self.rate = spec.rate
        self.channels = spec.channels
        self._resampler: av.audio.resampler.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def _play(self, pcm: Pcm) -> None:
        """Play interleaved s16 samples in the device's format."""

    async def write(self, frame: av.AudioFrame) -> None:
        pcm = self._convert(frame)
        if pcm.size:
            await self._play(pcm)

    def _convert(self, frame: av.AudioFrame) -> Pcm:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        # A resampler is bound to its input format; a new codec or peer may change it.
        if self._resampler is None or source != self._source:
            self._resampler = av.audio.resampler.AudioResampler(
                format="s16", layout="mono" if self.channels == 1 else "stereo", rate=self.rate
            )
            self._source = source
        chunks = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        return (
            np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.empty(0, np.int16)
        )


def open_microphone(spec: AudioSpec, *, label: str, tone_hz: float | None = None) -> Microphone:
    """Build (not start) the microphone a profile asks for.

    The synthetic one plays `tone_hz`, by default the label's own tone (see `tone_for`).
    """
    microphone: Microphone
    if spec.backend == "synthetic":
        from tiepdan.board.audio.synthetic import ToneMicrophone, tone_for

        microphone = ToneMicrophone(spec, tone_hz=tone_for(label) if tone_hz is None else tone_hz)
    elif spec.backend == "pyaudio":
        from tiepdan.board.audio.portaudio import PortAudioMicrophone

        microphone = PortAudioMicrophone(spec)
    else:
        raise BoardError(f"unknown audio backend {spec.backend!r}")
    log.info(
        "microphone_open backend=%s device=%s rate=%d", spec.backend, spec.input_device, spec.rate
    )
    return microphone


def open_speaker(spec: AudioSpec) -> Speaker:
    """Build (not start) the speaker a profile asks for."""
    speaker: Speaker
    if spec.backend == "synthetic":
        from tiepdan.board.audio.synthetic import RingSpeaker

        speaker = RingSpeaker(spec)
    elif spec.backend == "pyaudio":
        from tiepdan.board.audio.portaudio import PortAudioSpeaker

        speaker = PortAudioSpeaker(spec)
    else:
        raise BoardError(f"unknown audio backend {spec.backend!r}")
    log.info(
        "speaker_open backend=%s device=%s rate=%d", spec.backend, spec.output_device, spec.rate
    )
    return speaker
