"""Recording benchmark: the recorder against plain muxing, and sealing against raw pyrage.

A minute (by default) of camera H.264 is encoded once up front (libx264, the box's settings);
then, in the same run and alternating, best of `--repeat`, in CPU time of this process
(threads included):

- plain muxing: the same packets into one Matroska file in memory, nothing else;
- the recorder: the same packets through a `Fanout` into `SegmentRecorder` (segments cut at
  key frames, muxed in RAM, written with fsync + rename, signed manifest records), with
  encryption switched off so that this ratio is the recorder's own overhead;
- sealing: every segment plaintext the recorder produced through `Sealer.seal` (age encrypt,
  both hashes, write, fsync, rename, fsync dir) against `pyrage.encrypt` of the same bytes.

    python -m tiepdan.tools.bench.recording --seconds 60

Files go to tmpfs (/dev/shm) by default so the disk does not decide; `--workdir` on an SD card
measures the card. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyrage
from av.stream import Stream
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.firmware.evidence.recorder import SegmentRecorder, Track
from tiepdan.firmware.evidence.sealer import Sealer
from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.h264 import H264Encoder

MS = Fraction(1, 1000)


class Clock:
    """The recorder's clock follows the packets being fed, so a minute takes no minute."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NoEncryption(Sealer):
    """Everything `Sealer.seal` does except the cipher: isolates the recorder's overhead."""

    def encrypt(self, plaintext: bytes) -> bytes:
        return plaintext


def encode(seconds: float, width: int, height: int, fps: int, bitrate: int,
           keyframe_interval: float) -> list[av.Packet[Stream]]:
    encoder = H264Encoder(width, height, fps, bitrate, keyframe_interval=keyframe_interval,
                          min_key_spacing=0)
    rng = np.random.default_rng(1)
    base = rng.integers(16, 235, (height, width), dtype=np.uint8)
    uv = np.full((height // 2, width), 128, dtype=np.uint8)
    packets: list[av.Packet[Stream]] = []
    for n in range(int(seconds * fps)):
        y = np.roll(base, n * 3, axis=1)  # motion, so P-frames carry something
        frame = av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
        frame.pts = n * 90000 // fps
        frame.time_base = Fraction(1, 90000)
        packets += encoder.encode(frame)
    return packets


def plain_mux(packets: list[av.Packet[Stream]], width: int, height: int) -> tuple[float, int]:
    started = time.process_time()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_mux_stream("h264", width=width, height=height)
        stream.time_base = MS
        for packet in packets:
            copy = av.Packet(bytes(packet))
            copy.is_keyframe = packet.is_keyframe
            copy.pts = copy.dts = int((packet.pts or 0) * 1000 // 90000)
            copy.time_base = MS
            copy.stream = stream
            container.mux(copy)
    return time.process_time() - started, len(buffer.getvalue())


async def record(packets: list[av.Packet[Stream]], directory: Path, recipient: str,
                 segment_seconds: float) -> tuple[float, SegmentRecorder]:
    clock = Clock()
    video: Fanout[av.Packet[Stream]] = Fanout("camera", is_key=lambda p: bool(p.is_keyframe))
    key = Ed25519PrivateKey.generate()
    recorder = SegmentRecorder(
        directory, [Track.copied("sent-video", video)], device="bench", session="bench",
        key=key, recipients=[recipient], boot_id="bench", segment_seconds=segment_seconds,
        clock=clock, sealer=NoEncryption([recipient]))
    started = time.process_time()
    await recorder.start()
    for packet in packets:
        clock.now = (packet.pts or 0) / 90000
        video.publish(packet)
        await asyncio.sleep(0)  # the recorder takes it, as it would one frame at a time
    await asyncio.sleep(0)
    await recorder.stop()
    return time.process_time() - started, recorder


def segment_plaintexts(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(directory.glob("*.mkv.age"))]


def seal_rate(plaintexts: list[bytes], directory: Path, recipient: str) -> tuple[float, float]:
    """(sealed MB/s, raw pyrage MB/s) over the same bytes."""
    total = sum(len(p) for p in plaintexts) / 1e6
    sealer = Sealer([recipient])
    directory.mkdir(parents=True, exist_ok=True)
    started = time.process_time()
    for n, plaintext in enumerate(plaintexts):
        sealer.seal(directory, f"{n:06d}.mkv.age", plaintext)
    sealed = time.process_time() - started
    recipients = [pyrage.x25519.Recipient.from_str(recipient)]
    started = time.process_time()
    for plaintext in plaintexts:
        pyrage.encrypt(plaintext, recipients)
    raw = time.process_time() - started
    return total / sealed, total / raw


def run(seconds: float, width: int, height: int, fps: int, bitrate: int,
        segment_seconds: float, repeat: int, workdir: Path) -> dict[str, Any]:
    packets = encode(seconds, width, height, fps, bitrate, keyframe_interval=segment_seconds)
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    plain_times, record_times, seal_rates, raw_rates = [], [], [], []
    recorder: SegmentRecorder | None = None
    plain_bytes = 0
    for n in range(repeat):
        elapsed, plain_bytes = plain_mux(packets, width, height)
        plain_times.append(elapsed)
        directory = workdir / f"rec-{n}"
        elapsed, recorder = asyncio.run(record(packets, directory, recipient, segment_seconds))
        record_times.append(elapsed)
        sealed, raw = seal_rate(segment_plaintexts(directory), workdir / f"seal-{n}", recipient)
        seal_rates.append(sealed)
        raw_rates.append(raw)
    assert recorder is not None
    media_bytes = sum(len(bytes(p)) for p in packets)
    best_plain, best_record = min(plain_times), min(record_times)
    return {
        "media_seconds": seconds,
        "video": f"{width}x{height}@{fps} {bitrate // 1000} kbit/s",
        "packets": len(packets),
        "media_mb": round(media_bytes / 1e6, 2),
        "segment_seconds": segment_seconds,
        "segments": recorder.counters.segments,
        "plain_mux_s": round(best_plain, 4),
        "recorder_s": round(best_record, 4),
        "recorder_overhead_ratio": round(best_record / best_plain, 3),
        "recorder_realtime_factor": round(seconds / best_record, 1),
        "container_overhead": round(recorder.counters.plain_bytes / plain_bytes, 4),
        "seal_mb_s": round(max(seal_rates), 1),
        "raw_pyrage_mb_s": round(max(raw_rates), 1),
        "seal_ratio": round(max(seal_rates) / max(raw_rates), 3),
        "seal_cpu_share_at_bitrate": round(bitrate / 8 / 1e6 / max(seal_rates), 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.recording",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=2_000_000)
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default: a fresh folder under /dev/shm (tmpfs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shm = Path("/dev/shm")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tiepdan-rec-bench-",
                                                    dir=shm if shm.is_dir() else None))
    try:
        result = run(args.seconds, args.width, args.height, args.fps, args.bitrate,
                     args.segment_seconds, args.repeat, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
