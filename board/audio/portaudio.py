"""Real audio through PortAudio (PyAudio): the USB speakerphone, or PipeWire's default device.

Reads and writes are PortAudio's blocking calls, run in a worker thread: the device's own
clock then paces the caller (a write returns once the device has room), and nothing is queued
on our side to add latency. Devices are picked by name substring, as USB names are stable
while card numbers move between boots.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any

import av
import numpy as np

from tiepdan.board.audio import FRAME_SECONDS, Microphone, Pcm, Speaker
from tiepdan.board.errors import BoardError
from tiepdan.board.profile import AudioSpec

__all__ = ["PortAudioMicrophone", "PortAudioSpeaker", "device_names", "find_device"]

log = logging.getLogger(__name__)


def _pyaudio() -> ModuleType:
    try:
        import pyaudio as module
    except ImportError as exc:
        raise BoardError(
            "real audio needs PyAudio: install python3-pyaudio (or pip install pyaudio "
            "with portaudio19-dev present)"
        ) from exc
    pyaudio: ModuleType = module
    return pyaudio


def device_names(pa: Any) -> list[str]:
    return [str(pa.get_device_info_by_index(i)["name"]) for i in range(pa.get_device_count())]


def find_device(pa: Any, name: str, *, output: bool, channels: int) -> int | None:
    """Index of the first device whose name contains `name`; None for PortAudio's default."""
    if name == "default":
        return None
    key = "maxOutputChannels" if output else "maxInputChannels"
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if name.lower() in str(info["name"]).lower() and int(info[key]) >= channels:
            return index
    kind = "output" if output else "input"
    found = ", ".join(repr(n) for n in device_names(pa)) or "none"
    raise BoardError(
        f"no audio {kind} device matching {name!r} with {channels} channel(s); devices: {found}"
    )


class _Stream:
    """One PortAudio stream and the PyAudio instance that owns it."""

    def __init__(self, spec: AudioSpec, *, output: bool) -> None:
        self.spec = spec
        self.output = output
        self.name = spec.output_device if output else spec.input_device
        self.frames = round(spec.rate * FRAME_SECONDS)
        self._pa: Any = None
        self._stream: Any = None
        # PortAudio streams are not safe to close during a blocking read or write.
        self.lock = asyncio.Lock()

    def open(self) -> None:
        pyaudio = _pyaudio()
        pa = pyaudio.PyAudio()
        try:
            index = find_device(pa, self.name, output=self.output, channels=self.spec.channels)
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=self.spec.channels,
                rate=self.spec.rate,
                input=not self.output,
                output=self.output,
                input_device_index=None if self.output else index,
                output_device_index=index if self.output else None,
                frames_per_buffer=self.frames,
            )
        except BoardError:
            pa.terminate()
            raise
        except (OSError, ValueError) as exc:
            pa.terminate()
            kind = "output" if self.output else "input"
            raise BoardError(
                f"cannot open audio {kind} {self.name!r} at {self.spec.rate} Hz, "
                f"{self.spec.channels} channel(s): {exc}"
            ) from exc
        self._pa = pa

    @property
    def stream(self) -> Any:
        if self._stream is None:
            raise BoardError(f"audio device {self.name!r} is not started")
        return self._stream

    def close(self) -> None:
        stream, self._stream = self._stream, None
        pa, self._pa = self._pa, None
        try:
            if stream is not None:
                stream.stop_stream()
                stream.close()
        finally:
            if pa is not None:
                pa.terminate()


class PortAudioMicrophone(Microphone):
    def __init__(self, spec: AudioSpec) -> None:
        super().__init__(spec)
        _pyaudio()
        self._device = _Stream(spec, output=False)
        self._pts = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._device.open)
        log.info("microphone_started backend=pyaudio device=%s", self.spec.input_device)

    async def stop(self) -> None:
        async with self._device.lock:
            await asyncio.to_thread(self._device.close)

    async def read(self) -> av.AudioFrame:
        async with self._device.lock:
            stream = self._device.stream
            try:
                data = await asyncio.to_thread(stream.read, self.samples_per_frame, False)
            except OSError as exc:
                raise BoardError(f"audio input {self.spec.input_device!r} failed: {exc}") from exc
        pcm: Pcm = np.frombuffer(data, dtype=np.int16)
        if self.spec.channels > 1:
            pcm = pcm.reshape(-1, self.spec.channels).mean(axis=1).astype(np.int16)
        frame = self._frame(pcm, self._pts)
        self._pts += pcm.size
        return frame


class PortAudioSpeaker(Speaker):
    def __init__(self, spec: AudioSpec) -> None:
        super().__init__(spec)
        _pyaudio()
        self._device = _Stream(spec, output=True)

    async def start(self) -> None:
        await asyncio.to_thread(self._device.open)
        log.info("speaker_started backend=pyaudio device=%s", self.spec.output_device)

    async def stop(self) -> None:
        async with self._device.lock:
            await asyncio.to_thread(self._device.close)

    async def _play(self, pcm: Pcm) -> None:
        async with self._device.lock:
            stream = self._device.stream
            try:
                await asyncio.to_thread(stream.write, pcm.tobytes())
            except OSError as exc:
                raise BoardError(f"audio output {self.spec.output_device!r} failed: {exc}") from exc
