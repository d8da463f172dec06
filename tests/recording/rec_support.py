"""REC's test support: a box's four media sources on a virtual clock, keys, and segment checks.

`Sources` produces what a box's call would (camera H.264 from the real encoder, microphone
frames, decoded received pictures, received audio) into real `Fanout`s, as fast as the
recorder takes them, with a clock the recorder reads, so seconds of media take milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyrage
from av.stream import Stream
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import FILENAME, Record, verify_chain
from tiepdan.firmware.evidence.recipients import sign_document
from tiepdan.firmware.evidence.recorder import SegmentRecorder, Track
from tiepdan.firmware.evidence.sealer import FileSystem
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import H264Encoder
from tiepdan.firmware.recording.session import recover_sessions

WIDTH, HEIGHT, FPS = 320, 180, 15
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960
TITLES = ["sent-video", "sent-audio", "received-video", "received-audio"]


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Archive:
    """The archive's age identity (what decrypts) and the controller's signing key."""

    identity: pyrage.x25519.Identity
    controller: Ed25519PrivateKey

    @classmethod
    def create(cls) -> Archive:
        return cls(pyrage.x25519.Identity.generate(), Ed25519PrivateKey.generate())

    @property
    def recipient(self) -> str:
        return str(self.identity.to_public())

    def identity_file(self, directory: Path) -> Path:
        path = directory / "archive-identity.txt"
        path.write_text(f"{self.identity}\n")
        os.chmod(path, 0o600)
        return path

    def install_on_box(self, state_dir: Path) -> None:
        """What enrollment and the uploader leave on a box: controller key, signed recipients."""
        raw = self.controller.public_key().public_bytes(serialization.Encoding.Raw,
                                                        serialization.PublicFormat.Raw)
        (state_dir / "identity").mkdir(parents=True, exist_ok=True)
        (state_dir / "identity" / "controller.pub").write_text(base64.b64encode(raw).decode()
                                                               + "\n")
        (state_dir / "recording").mkdir(parents=True, exist_ok=True)
        (state_dir / "recording" / "recipients.json").write_bytes(
            sign_document([self.recipient], self.controller))


class Sources:
    """The four fanouts of a box's call, fed from a virtual clock (or real time if None)."""

    def __init__(self, clock: VirtualClock | None, *, keyframe_interval: float = 4.0,
                 received_burst: int = 1) -> None:
        self.clock = clock or VirtualClock()
        # The far end's pictures can come in bursts (a jittery link): each waits for the
        # burst, so it arrives up to `received_burst - 1` frames after its own time.
        self.received_burst = received_burst
        self._held: list[av.VideoFrame] = []
        self.realtime = clock is None
        # Key requests reach this encoder only through its own fanout; a call's fanout asks
        # the (idle) camera encoder instead, so there a short interval stands in.
        self.encoder = H264Encoder(WIDTH, HEIGHT, FPS, 200_000,
                                   keyframe_interval=keyframe_interval, min_key_spacing=0)
        self.sent_video: Fanout[av.Packet[Stream]] = Fanout(
            "camera", is_key=lambda p: bool(p.is_keyframe),
            on_key_request=self._request_key)  # whichever encoder is current
        self.sent_audio: Fanout[av.AudioFrame] = Fanout("microphone")
        self.received_video: Fanout[av.VideoFrame] = Fanout("received-video")
        self.received_audio: Fanout[av.AudioFrame] = Fanout("received-audio")
        self._tick = 0
        self._audio = 0
        self.key_times: list[float] = []

    def tracks(self) -> list[Track]:
        return [Track.copied("sent-video", self.sent_video),
                Track.audio("sent-audio", self.sent_audio),
                Track.video("received-video", self.received_video, fps=5, width=160,
                            height=90, bitrate=100_000),
                Track.audio("received-audio", self.received_audio)]

    def _request_key(self) -> None:
        self.encoder.request_key()

    def resize(self, width: int, height: int) -> None:
        """The camera's encoder steps to another size (adaptive bitrate's ladder)."""
        self.encoder = H264Encoder(width, height, FPS, 200_000, keyframe_interval=4.0,
                                   min_key_spacing=0)

    def _picture(self, n: int) -> av.VideoFrame:
        y = np.full((HEIGHT, WIDTH), 16 + (n * 7) % 200, dtype=np.uint8)
        y[:, (n * 4) % WIDTH] = 235
        uv = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
        frame.pts = n * 90000 // FPS
        frame.time_base = Fraction(1, 90000)
        return frame

    def _tone(self, start: int, channels: int) -> av.AudioFrame:
        n = np.arange(start, start + AUDIO_SAMPLES)
        wave = (np.sin(n * 2 * np.pi * 440 / AUDIO_RATE) * 8000).astype(np.int16)
        data = np.repeat(wave, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16",
                                           layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        return frame

    async def play(self, seconds: float) -> None:
        """Publish `seconds` of media, advancing the virtual clock or keeping real time."""
        end = self.clock.now + seconds
        started = time.monotonic() - self._tick / FPS
        while self.clock.now < end:
            step = 1 / FPS
            self.clock.now += step
            picture = self._picture(self._tick)
            for packet in await asyncio.to_thread(self.encoder.encode, picture):
                if packet.is_keyframe:
                    self.key_times.append(self.clock.now)
                self.sent_video.publish(packet)
            self._held.append(self._picture(self._tick + 1000))
            if self._tick == 0 or len(self._held) >= self.received_burst:
                for held in self._held:
                    self.received_video.publish(held)
                self._held = []
            self._tick += 1
            target = self._tick * 90000 // FPS * AUDIO_RATE // 90000
            while self._audio < target:
                self.sent_audio.publish(self._tone(self._audio, 1))
                self.received_audio.publish(self._tone(self._audio, 2))
                self._audio += AUDIO_SAMPLES
            if self.realtime:
                await asyncio.sleep(max(0.0, started + self._tick / FPS - time.monotonic()))
            else:
                await asyncio.sleep(0)


def manifest_lines(directory: Path) -> list[bytes]:
    data = (directory / FILENAME).read_bytes()
    return data.split(b"\n")[:-1] if data else []


def verified_records(directory: Path, device: str, session: str,
                     key: Ed25519PrivateKey) -> list[Record]:
    records, problems = verify_chain(manifest_lines(directory), device=device, session=session,
                                     key_for=lambda _: key.public_key())
    assert not problems, [str(p) for p in problems]
    return records


def decrypt_segment(directory: Path, record: Record, archive: Archive) -> bytes:
    """Decrypt one listed segment and check both hashes the record binds."""
    import hashlib

    segment = record.segment
    assert segment is not None
    ciphertext = (directory / segment.name).read_bytes()
    assert len(ciphertext) == segment.ct_size
    assert hashlib.sha256(ciphertext).hexdigest() == segment.ct_sha256
    plaintext: bytes = pyrage.decrypt(ciphertext, [archive.identity])
    assert len(plaintext) == segment.pt_size
    assert hashlib.sha256(plaintext).hexdigest() == segment.pt_sha256
    return plaintext


def probe(plaintext: bytes) -> dict[str, Any]:
    """Streams, titles, packet timestamps and decoded frame counts of one Matroska segment."""
    with av.open(io.BytesIO(plaintext), "r") as container:
        titles = [s.metadata.get("title") for s in container.streams]
        packets: dict[str, list[tuple[int, bool]]] = {t or "": [] for t in titles}
        for packet in container.demux():
            if packet.pts is not None and packet.stream.time_base is not None:
                ms = int(packet.pts * packet.stream.time_base * 1000)
                packets[titles[packet.stream.index] or ""].append((ms, packet.is_keyframe))
    decoded: dict[str, int] = {}
    with av.open(io.BytesIO(plaintext), "r") as container:
        for index, title in enumerate(titles):
            container.seek(0)
            stream = container.streams[index]
            decoded[title or ""] = len(list(container.decode(stream)))
    return {"titles": titles, "packets": packets, "decoded": decoded}


def plaintext_free(directory: Path) -> list[str]:
    """Names in a recording directory that are neither the manifest nor age files."""
    bad = []
    for path in directory.rglob("*"):
        if path.is_file() and path.name != FILENAME:
            head = path.read_bytes()[:22]
            if not (path.name.endswith(".age") and head.startswith(b"age-encryption.org/v1")):
                bad.append(path.name)
    return bad


# -- the kill -9 harness: `python -m tests.recording.rec_support <dir> <state> <session> <rcpt>`


async def _record_forever(directory: Path, state: Path, session: str, recipient: str) -> None:
    """What a box does after a restart: recover, then record until killed."""
    key = Identity(state).signing_key()
    fs = FileSystem()
    recovered = recover_sessions(directory, fs, device=CRASH_DEVICE, key=key,
                                 boot_id=uuid.uuid4().hex, clock_synced=lambda: False)
    _say(f"recovered {recovered}")
    sources = Sources(None)
    recorder = SegmentRecorder(directory / session, sources.tracks(), device=CRASH_DEVICE,
                               session=session, key=key, recipients=[recipient],
                               boot_id=uuid.uuid4().hex, segment_seconds=CRASH_SEGMENT_S, fs=fs)
    await recorder.start()
    _say(f"recording {time.monotonic()}")

    async def report() -> None:
        last = None
        while True:
            if recorder.open_index != last:
                last = recorder.open_index
                _say(f"open {last}")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(report())
    await sources.play(3600)
    task.cancel()


def _say(line: str) -> None:
    """The harness's protocol with the test: one line per fact, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


CRASH_DEVICE = "box-crash"
CRASH_SEGMENT_S = 0.5

if __name__ == "__main__":
    asyncio.run(_record_forever(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]))


def received_video_sizes(state_dir: Path, recording_dir: Path, device: str, session: str,
                         archive: Archive) -> list[tuple[int, int]]:
    """Every frame of the received picture a box recorded for `session`, decoded from its
    segments once their manifest verified (hashes, chain, signatures): its size, in order."""
    directory = recording_dir / session
    records = verified_records(directory, device, session, Identity(state_dir).signing_key())
    sizes: list[tuple[int, int]] = []
    for record in records:
        if record.segment is None:
            continue
        with av.open(io.BytesIO(decrypt_segment(directory, record, archive))) as container:
            for stream in container.streams.video:
                if stream.metadata.get("title") == "received-video":
                    frames = [(f.width, f.height) for f in container.decode(stream)]
                    assert frames, f"{record.segment.name}: no received picture decodes"
                    sizes.extend(frames)
    return sizes
