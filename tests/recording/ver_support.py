"""A real archive on disk for the archivist's tests, built the way the box and archive build it.

Segments are real Matroska files muxed with PyAV (H.264 via libx264, Opus), titled as the
recording format says, timestamps continuing across segments; sealed with pyrage to a fresh
age identity; listed in a manifest written by `firmware.manifest.Manifest` with a fresh box
Ed25519 key; receipts (`firmware.receipt`) and the closed document (`controller.archive`)
signed by the controller key that `SigningKey` creates in the data dir; the box key bound in
the controller DB with `Identities`.
"""

from __future__ import annotations

import base64
import fractions
import functools
import hashlib
import io
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import msgspec
import numpy as np
import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.controller.archive.closed import ClosedRecording, ClosedSegment, ClosedSession
from tiepdan.controller.identities import Identities
from tiepdan.controller.signing import SigningKey
from tiepdan.controller.store import Database
from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, Record, Segment
from tiepdan.firmware.evidence.receipt import Receipt, sign_receipt

SESSION = "s-0123456789ab"
BOX = "box-a"
CONTROLLER_ID = "central"
BRIDGE = f"controller-{CONTROLLER_ID}"
SEGMENT_MS = 1000
FPS = 10
BOX_STREAMS = ("sent-video", "sent-audio", "received-video", "received-audio")
BRIDGE_STREAMS = ("composed-video", "mixed-audio")
CHUNK = 64 * 1024 + 16  # age STREAM chunk on disk: 64 KiB plaintext + Poly1305 tag
NONCE = 16


def segment_media(titles: Sequence[str], index: int, *, size: tuple[int, int] = (160, 120)) \
        -> bytes:
    """One self-contained MKV: a key frame first, noise pictures (lossless, so > 128 KiB)."""
    start = index * SEGMENT_MS
    tb = fractions.Fraction(1, 1000)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        streams: list[tuple[str, Any]] = []
        for title in titles:
            if title.endswith("video"):
                stream = out.add_stream("libx264", rate=FPS)
                stream.width, stream.height = size if title != "received-video" else (96, 64)
                stream.pix_fmt = "yuv420p"
                stream.time_base = tb
                stream.codec_context.options = {"preset": "ultrafast", "qp": "0",
                                                "tune": "zerolatency"}
            else:
                stream = out.add_stream("libopus", rate=48000)
                stream.layout = "mono"
            stream.metadata["title"] = title
            streams.append((title, stream))
        rng = np.random.default_rng(index)
        for title, stream in streams:
            if title.endswith("video"):
                for i in range(SEGMENT_MS * FPS // 1000):
                    shape = (stream.height, stream.width, 3)
                    frame = av.VideoFrame.from_ndarray(
                        rng.integers(0, 255, shape, dtype=np.uint8), format="rgb24")
                    frame.pts, frame.time_base = start + i * 1000 // FPS, tb
                    for packet in stream.encode(frame):
                        out.mux(packet)
            else:
                tone = (np.sin(np.arange(960) / 8) * 8000).astype(np.int16)[None, :]
                for i in range(SEGMENT_MS * 48 // 960):
                    frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
                    frame.sample_rate = 48000
                    frame.pts, frame.time_base = start * 48 + i * 960, fractions.Fraction(
                        1, 48000)
                    for packet in stream.encode(frame):
                        out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return buf.getvalue()


@functools.cache
def plaintexts(recorder: str, count: int) -> tuple[bytes, ...]:
    titles = BRIDGE_STREAMS if recorder.startswith("controller-") else BOX_STREAMS
    return tuple(segment_media(titles, i) for i in range(count))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign_doc(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The controller's convention: Ed25519 over the sorted encoding with sig=""."""
    signed = msgspec.json.encode({**doc, "sig": ""}, order="sorted")
    return {**doc, "sig": base64.b64encode(key.sign(signed)).decode()}


def private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


@dataclass
class Recording:
    dir: Path
    recorder: str
    key: Ed25519PrivateKey
    plaintexts: list[bytes]
    ciphertexts: list[bytes]
    records: list[Record] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.dir / FILENAME

    def segment_file(self, index: int) -> Path:
        return self.dir / f"{index:06d}.mkv.age"

    def lines(self) -> list[bytes]:
        return [line for line in self.manifest.read_bytes().split(b"\n") if line]

    def write_lines(self, lines: Sequence[bytes]) -> None:
        self.manifest.write_bytes(b"".join(line + b"\n" for line in lines))


@dataclass
class Archive:
    root: Path
    data_dir: Path
    config: Path
    identity_file: Path
    identity: pyrage.x25519.Identity
    controller_key: Ed25519PrivateKey
    box_key: Ed25519PrivateKey
    db: Database
    recordings: dict[str, Recording] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def closed(self) -> Path:
        return self.dir / "closed" / f"{SESSION}.json"

    def cli(self, *args: str) -> list[str]:
        return ["--config", str(self.config), *args]

    def rewrite_recording(self, recorder: str, ciphertexts: Sequence[bytes]) -> None:
        """Re-seal the recording as the recorder itself would sign it, with these ciphertexts.

        Stands in for a box that hashed and signed whatever it wrote: the manifest and the
        receipts then agree with the (tampered) files, and only decryption can tell.
        """
        rec = self.recordings[recorder]
        shutil.rmtree(rec.dir)
        self.recordings[recorder] = write_recording(
            self.dir, recorder, rec.key, self.controller_key, rec.plaintexts, list(ciphertexts))
        write_closed(self)


def write_recording(archive_dir: Path, recorder: str, key: Ed25519PrivateKey,
                    controller_key: Ed25519PrivateKey, plain: Sequence[bytes],
                    sealed: Sequence[bytes]) -> Recording:
    directory = archive_dir / "recordings" / SESSION / recorder
    directory.mkdir(parents=True)
    rec = Recording(directory, recorder, key, list(plain), list(sealed))
    manifest = Manifest(directory / FILENAME, device=recorder, session=SESSION, key=key,
                        boot_id="boot-1", clock_synced=lambda: True)
    receipts = []
    rec.records.append(manifest.append("start"))
    for index, (pt, ct) in enumerate(zip(plain, sealed, strict=True)):
        seg = Segment(name=f"{index:06d}.mkv.age", index=index, ct_sha256=sha(ct),
                      ct_size=len(ct), pt_sha256=sha(pt), pt_size=len(pt),
                      start_utc_ms=int(time.time() * 1000), duration_ms=SEGMENT_MS)
        (directory / seg.name).write_bytes(ct)
        record = manifest.append("segment", segment=seg)
        rec.records.append(record)
        receipts.append(sign_receipt(Receipt(
            v=1, archive=CONTROLLER_ID, recorder=recorder, session=SESSION, name=seg.name,
            index=index, ct_sha256=seg.ct_sha256, ct_size=seg.ct_size, record_seq=record.seq,
            received_utc_ms=int(time.time() * 1000)), controller_key))
    rec.records.append(manifest.append("stop", detail={"reason": "session_ended"}))
    manifest.close()
    (directory / "receipts.jsonl").write_bytes(
        b"".join(r.line() + b"\n" for r in receipts))
    return rec


def write_closed(archive: Archive) -> None:
    """The document as the archive signs it (`controller.archive.ClosedSession`)."""
    recordings = [ClosedRecording(
        recorder=name, records=len(rec.records), last_hash=rec.records[-1].hash, end="stop",
        segments=[ClosedSegment(r.segment.name, r.segment.index, r.segment.ct_sha256,
                                r.segment.ct_size, r.segment.pt_sha256)
                  for r in rec.records if r.segment is not None])
        for name, rec in sorted(archive.recordings.items())]
    doc = ClosedSession(v=1, archive=CONTROLLER_ID, session=SESSION,
                        closed_utc_ms=int(time.time() * 1000), closed_by="archivist",
                        points=[BOX], recordings=recordings)
    doc = msgspec.structs.replace(doc, sig=base64.b64encode(
        archive.controller_key.sign(doc.signed_bytes())).decode())
    archive.closed.parent.mkdir(parents=True, exist_ok=True)
    archive.closed.write_bytes(msgspec.json.encode(doc, order="sorted") + b"\n")


def build_archive(root: Path, *, box_segments: int = 3, bridge_segments: int = 2,
                  closed: bool = True) -> Archive:
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    controller_key = private_key(SigningKey(data_dir / "signing.key").path)
    box_key = Ed25519PrivateKey.generate()
    db = Database(data_dir / "controller.db")
    Identities(db).bind(BOX, box_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    identity = pyrage.x25519.Identity.generate()
    identity_file = root / "identity.txt"
    identity_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    identity_file.chmod(0o600)
    config = root / "controller.toml"
    config.write_text(f'[controller]\nid = "{CONTROLLER_ID}"\ndata_dir = "{data_dir}"\n')
    archive = Archive(root, data_dir, config, identity_file, identity, controller_key, box_key,
                      db)
    for recorder, key, count in ((BOX, box_key, box_segments),
                                 (BRIDGE, controller_key, bridge_segments)):
        plain = list(plaintexts(recorder, count))
        sealed = [pyrage.encrypt(pt, [identity.to_public()]) for pt in plain]
        archive.recordings[recorder] = write_recording(archive.dir, recorder, key,
                                                       controller_key, plain, sealed)
    if closed:
        write_closed(archive)
    return archive


def header_end(ct: bytes) -> int:
    """Offset of the age payload (the 16-byte nonce): just past the header's MAC line."""
    mac = ct.index(b"\n--- ")
    return ct.index(b"\n", mac + 1) + 1


def chunks(ct: bytes) -> tuple[bytes, list[bytes]]:
    """(header + nonce, the payload's encrypted chunks)."""
    start = header_end(ct) + NONCE
    body = ct[start:]
    return ct[:start], [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
