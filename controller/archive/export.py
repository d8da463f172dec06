"""One recording out of the archive as a playable MP4, with the verification report beside it.

Segments are decrypted one at a time in memory, their plaintext hash checked against the signed
manifest, and their packets remuxed (no re-encoding: H.264 copied, Opus copied) into one MP4.
The MP4 grows in a temporary file in the destination directory and is renamed into place only
when every segment went in; any failure deletes it, so no partial plaintext is ever left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import msgspec
import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.controller.archive.verification import (
    SegmentError,
    VerificationReport,
    decrypt_segment,
    session_dir,
    verify_recording,
)
from tiepdan.errors import TiepdanError
from tiepdan.firmware.core.durable import write_atomic
from tiepdan.firmware.evidence.manifest import KeyLookup

log = logging.getLogger(__name__)


class ExportError(TiepdanError):
    """The export was refused or failed; `report` says why, nothing was written."""

    def __init__(self, message: str, report: VerificationReport) -> None:
        super().__init__(message)
        self.report = report


def report_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.verification.json")


def export_recording(archive_dir: Path, session: str, recorder: str, *, out: Path,
                     identities: Sequence[pyrage.x25519.Identity], key_for: KeyLookup,
                     controller_key: Ed25519PublicKey, archive_id: str | None = None,
                     allow_gaps: bool = False) -> VerificationReport:
    """Verify, decrypt and remux one recording into `out`; write `<stem>.verification.json`.

    Refuses (ExportError) when anything fails to verify, unless `allow_gaps`: then segments
    that verify are exported, the others are left out and listed as gaps in the report.
    """
    directory = session_dir(archive_dir, session) / recorder
    if not directory.is_dir():
        raise FileNotFoundError(f"no recording of {recorder!r} in session {session!r}")
    report = verify_recording(directory, recorder=recorder, session=session, key_for=key_for,
                              controller_key=controller_key, archive_id=archive_id)
    if not report.ok and not allow_gaps:
        raise ExportError("the recording does not verify; nothing exported", report)
    report.decrypted = True
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            remux = _Remux(handle)
            try:
                for record in report.segments:
                    seg = record.segment
                    assert seg is not None
                    item = report.item("segment", seg.name)
                    if not item.ok:
                        remux.gap(seg.name)
                        continue
                    try:
                        plaintext = decrypt_segment(
                            (directory / seg.name).read_bytes(), identities,
                            pt_sha256=seg.pt_sha256, pt_size=seg.pt_size)
                    except SegmentError as exc:
                        item.problems.append(str(exc))
                        if not allow_gaps:
                            raise ExportError(f"segment {seg.name}: {exc}", report) from None
                        remux.gap(seg.name)
                        continue
                    try:
                        remux.add(seg.name, plaintext)
                    except (av.FFmpegError, ValueError) as exc:
                        item.problems.append(f"cannot be remuxed: {exc}")
                        raise ExportError(f"segment {seg.name}: {exc}", report) from None
                    del plaintext
                    item.note += "; plaintext ok; muxed"
            finally:
                remux.close()
            if not remux.segments:
                raise ExportError("no segment could be exported", report)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        report.export = remux.summary(out.name, digest)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        log.warning("export_failed session=%s recorder=%s", session, recorder)
        raise
    _write_report(report_path(out), report)
    log.info("export_done session=%s recorder=%s out=%s segments=%d gaps=%d", session, recorder,
             out, len(remux.segments), len(remux.gaps))
    return report


def _write_report(path: Path, report: VerificationReport) -> None:
    write_atomic(path, msgspec.json.format(msgspec.json.encode(report.to_json())) + b"\n")


@dataclass
class _Remux:
    """Packets of successive segments into one MP4, streams matched by their `title`."""

    handle: Any
    segments: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    fixups: int = 0
    _out: Any = None
    _streams: dict[str, Any] = field(default_factory=dict)
    _last_dts: dict[str, int] = field(default_factory=dict)
    _first_ms: int | None = None
    _end_ms: int = 0

    def gap(self, name: str) -> None:
        self.gaps.append(name)

    def add(self, name: str, plaintext: bytes) -> None:
        with av.open(io.BytesIO(plaintext), "r", format="matroska") as source:
            keys = [_stream_key(s) for s in source.streams]
            if len(set(keys)) != len(keys):
                raise ValueError("two streams share a title")
            if self._out is None:
                self._out = av.open(self.handle, "w", format="mp4")
                for stream, key in zip(source.streams, keys, strict=True):
                    target = self._out.add_stream_from_template(stream)
                    target.metadata["title"] = key
                    self._streams[key] = target
            elif set(keys) != set(self._streams):
                raise ValueError(f"streams {sorted(keys)} differ from {sorted(self._streams)}")
            for packet in source.demux():
                if packet.dts is None:
                    continue  # demuxer's end-of-stream marker
                key = _stream_key(packet.stream)
                self._mux(key, packet)
        self.segments.append(name)

    def _mux(self, key: str, packet: Any) -> None:
        # Timestamps continue across segments (the recorder's contract); Opus pre-skip can still
        # make a segment's first packet overlap the last one: nudge it just past, no drift.
        last = self._last_dts.get(key)
        if last is not None and packet.dts <= last:
            shift = last + 1 - packet.dts
            packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
            self.fixups += 1
        self._last_dts[key] = packet.dts
        base = packet.time_base
        start_ms = int((packet.pts if packet.pts is not None else packet.dts) * base * 1000)
        end_ms = start_ms + int((packet.duration or 0) * base * 1000)
        self._first_ms = start_ms if self._first_ms is None else min(self._first_ms, start_ms)
        self._end_ms = max(self._end_ms, end_ms)
        packet.stream = self._streams[key]
        self._out.mux(packet)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def summary(self, name: str, digest: str) -> dict[str, Any]:
        return {"file": name, "sha256": digest, "segments": self.segments, "gaps": self.gaps,
                "streams": sorted(self._streams), "timestamp_fixups": self.fixups,
                "start_ms": self._first_ms or 0,
                "duration_ms": self._end_ms - (self._first_ms or 0)}


def _stream_key(stream: Any) -> str:
    title = stream.metadata.get("title")
    return str(title) if title else f"{stream.type}-{stream.index}"
