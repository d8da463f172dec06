"""The segment recorder on real fanouts, real encoders, real files: what it seals is evidence.

Media runs on a virtual clock (seconds of a box's four tracks take a fraction of a second);
sealing, renames, fsyncs and the manifest are real. A full disk is injected at the OS seam
(`FileSystem`) at segment write, at rename, and at manifest append.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.recording.rec_support import (
    FPS,
    HEIGHT,
    TITLES,
    WIDTH,
    Archive,
    Sources,
    VirtualClock,
    decrypt_segment,
    plaintext_free,
    probe,
    verified_records,
)
from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, Record, RecordKind, Segment
from tiepdan.firmware.evidence.recorder import SegmentRecorder
from tiepdan.firmware.evidence.sealer import FileSystem, Sealer, SealError

DEVICE, SESSION = "box-1", "s-rec"
FRAME_MS = 1000 / FPS


@pytest.fixture(scope="module")
def archive() -> Archive:
    return Archive.create()


def make(directory: Path, archive: Archive, key: Ed25519PrivateKey, clock: VirtualClock,
         sources: Sources, **kwargs: object) -> SegmentRecorder:
    return SegmentRecorder(directory, sources.tracks(), device=DEVICE, session=SESSION,
                           key=key, recipients=[archive.recipient], boot_id="boot-1",
                           clock=clock, **kwargs)  # type: ignore[arg-type]


async def record(directory: Path, archive: Archive, key: Ed25519PrivateKey,
                 seconds: float, received_burst: int = 1, **kwargs: object) -> SegmentRecorder:
    clock = VirtualClock()
    sources = Sources(clock, received_burst=received_burst)
    recorder = make(directory, archive, key, clock, sources, **kwargs)
    await recorder.start()
    await sources.play(seconds)
    await asyncio.sleep(0.05)
    await recorder.stop()
    return recorder


def segments(records: list[Record]) -> list[Segment]:
    return [r.segment for r in records if r.segment is not None]


@pytest.mark.parametrize("received_burst", [1, 9], ids=["steady", "late-far-end"])
async def test_segments_decrypt_play_and_chain(tmp_path: Path, archive: Archive,
                                               received_burst: int) -> None:
    """Segments tile the timeline and every track of each plays from the segment's start,
    also when the far end's pictures come in bursts, up to 600 ms after their time: each
    late one joins the segment its time falls in."""
    key = Ed25519PrivateKey.generate()
    recorder = await record(tmp_path / SESSION, archive, key, 7.0,
                            received_burst=received_burst)
    records = verified_records(tmp_path / SESSION, DEVICE, SESSION, key)
    kinds = [r.kind for r in records]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("segment") >= 3
    assert recorder.counters.segments == kinds.count("segment")
    assert recorder.dropped == 0
    last: dict[str, int] = {}
    previous_end = None
    for entry in records:
        segment = entry.segment
        if segment is None:
            continue
        assert segment.name == f"{segment.index:06d}.mkv.age"
        media = probe(decrypt_segment(tmp_path / SESSION, entry, archive))
        assert media["titles"] == TITLES
        for title in TITLES:
            packets = media["packets"][title]
            assert packets, f"{title} empty in {segment.name}"
            assert media["decoded"][title] > 0, (title, segment.name, len(packets))
            if "video" in title:
                assert packets[0][1], f"{title} of {segment.name} does not start at a key frame"
            times = [ms for ms, _ in packets]
            assert times == sorted(times) and len(set(times)) == len(times)
            if title in last:  # the timeline runs on from one segment to the next
                assert times[0] > last[title]
                assert times[0] - last[title] <= 3 * FRAME_MS if title == "sent-video" \
                    else True
            last[title] = times[-1]
        start = int(entry.detail["start_ms"])
        assert media["packets"]["sent-video"][0][0] == start
        if previous_end is not None:
            assert start == previous_end
        previous_end = int(entry.detail["end_ms"])
        if segment.index < len(segments(records)) - 1:
            assert 2000 - 200 <= segment.duration_ms <= 2000 + 2 * FRAME_MS
    assert [s.index for s in segments(records)] == list(range(len(segments(records))))
    assert plaintext_free(tmp_path) == []


MASTERS = {0x18538067, 0x1654AE6B, 0xAE, 0xE0}  # Segment, Tracks, TrackEntry, Video


def declared_sizes(mkv: bytes) -> dict[str, tuple[int, int]]:
    """Each video track's PixelWidth x PixelHeight as the Matroska header declares them
    (a decoder reads the size from the stream itself, so it would not tell)."""
    def vint(at: int, keep_marker: bool) -> tuple[int, int]:
        length = 8 - mkv[at].bit_length() + 1
        value = mkv[at] if keep_marker else mkv[at] & (0xFF >> length)
        for byte in mkv[at + 1:at + length]:
            value = value << 8 | byte
        return value, at + length

    found: dict[str, tuple[int, int]] = {}

    def walk(at: int, end: int, entry: dict[str, int | str]) -> None:
        while at < end:
            element, at = vint(at, True)
            size, at = vint(at, False)
            stop = min(end, at + size)
            if element in MASTERS:
                child: dict[str, int | str] = {} if element == 0xAE else entry
                walk(at, stop, child)
                if element == 0xAE and "w" in child:
                    found[str(child["name"])] = (int(child["w"]), int(child["h"]))
            elif element == 0x536E:
                entry["name"] = mkv[at:stop].decode()
            elif element in (0xB0, 0xBA):
                entry["w" if element == 0xB0 else "h"] = int.from_bytes(mkv[at:stop])
            at = stop

    walk(0, len(mkv), {})
    return found


async def test_each_segment_declares_the_camera_size_it_holds(tmp_path: Path,
                                                               archive: Archive) -> None:
    """Adaptive bitrate steps the camera's size down mid-recording: the segments after it
    declare the new size, not the first one's."""
    key = Ed25519PrivateKey.generate()
    clock = VirtualClock()
    sources = Sources(clock)
    recorder = make(tmp_path / SESSION, archive, key, clock, sources)
    await recorder.start()
    await sources.play(3.0)
    sources.resize(WIDTH // 2, HEIGHT // 2)
    await sources.play(4.5)
    await asyncio.sleep(0.05)
    await recorder.stop()
    sizes = []
    for entry in verified_records(tmp_path / SESSION, DEVICE, SESSION, key):
        if entry.segment is not None:
            plaintext = decrypt_segment(tmp_path / SESSION, entry, archive)
            sizes.append(declared_sizes(plaintext)["sent-video"])
    assert sizes[0] == (WIDTH, HEIGHT)
    assert sizes[-2:] == [(WIDTH // 2, HEIGHT // 2)] * 2, sizes


@pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")
async def test_the_standard_age_tool_decrypts_a_segment(tmp_path: Path, archive: Archive) -> None:
    key = Ed25519PrivateKey.generate()
    await record(tmp_path / SESSION, archive, key, 2.5)
    record_ = next(r for r in verified_records(tmp_path / SESSION, DEVICE, SESSION, key)
                   if r.segment is not None)
    assert record_.segment is not None
    out = await asyncio.to_thread(subprocess.run, [
        "age", "-d", "-i", str(archive.identity_file(tmp_path)),
        str(tmp_path / SESSION / record_.segment.name)], capture_output=True, check=True)
    assert out.stdout == decrypt_segment(tmp_path / SESSION, record_, archive)
    assert probe(out.stdout)["titles"] == TITLES


async def test_a_restart_continues_the_numbering_and_the_timeline(tmp_path: Path,
                                                                  archive: Archive) -> None:
    key = Ed25519PrivateKey.generate()
    await record(tmp_path / SESSION, archive, key, 4.5)
    await record(tmp_path / SESSION, archive, key, 4.5)
    records = verified_records(tmp_path / SESSION, DEVICE, SESSION, key)
    assert [r.kind for r in records].count("start") == 2
    found = segments(records)
    assert [s.index for s in found] == list(range(len(found)))
    second = [r for r in records if r.kind == "start"][1]
    assert second.detail["resumed"] is True
    restart = next(i for i, r in enumerate(records) if r is second)
    before = [r for r in records[:restart] if r.segment]
    after = [r for r in records[restart:] if r.segment]
    assert int(after[0].detail["start_ms"]) > int(before[-1].detail["end_ms"])
    for record_ in after:
        decrypt_segment(tmp_path / SESSION, record_, archive)


def test_no_recipient_no_recorder(tmp_path: Path) -> None:
    with pytest.raises(SealError):
        Sealer([])
    with pytest.raises(SealError):
        Sealer(["age1notarecipient"])


# -- a full disk -----------------------------------------------------------------------------


class FullDisk(FileSystem):
    """Fails with ENOSPC at one kind of call once `after` segments have been sealed."""

    def __init__(self, where: str, after: int) -> None:
        self.where = where
        self.after = after
        self.sealed = 0

    def _check(self, where: str) -> None:
        if where == self.where and self.sealed >= self.after:
            raise OSError(errno.ENOSPC, "No space left on device")

    def write(self, path: Path, data: bytes) -> None:
        self._check("write")
        super().write(path, data)

    def rename(self, source: Path, target: Path) -> None:
        self._check("rename")
        super().rename(source, target)
        self.sealed += 1

    def open_manifest(self, path: Path, **kwargs: object) -> Manifest:
        disk = self

        class Full(Manifest):
            def append(self, kind: RecordKind, *, segment: Segment | None = None,
                       detail: dict[str, str | int | bool] | None = None) -> Record:
                if disk.where == "manifest" and kind == "segment" and disk.sealed > disk.after:
                    disk.where = "all"  # from now on nothing fits
                if disk.where == "all":
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().append(kind, segment=segment, detail=detail)

        return Full(path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["write", "rename", "manifest"])
async def test_a_full_disk_stops_cleanly_and_keeps_what_is_sealed(
        tmp_path: Path, archive: Archive, where: str) -> None:
    key = Ed25519PrivateKey.generate()
    disk = FullDisk(where, after=2)
    failures: list[BaseException] = []
    clock = VirtualClock()
    sources = Sources(clock)
    recorder = make(tmp_path / SESSION, archive, key, clock, sources, fs=disk,
                    on_failure=failures.append)
    await recorder.start()
    await sources.play(9.0)
    await asyncio.sleep(0.05)
    assert recorder.state == "failed"
    assert len(failures) == 1 and isinstance(failures[0], OSError)
    assert failures[0].errno == errno.ENOSPC
    await recorder.stop()
    records = verified_records(tmp_path / SESSION, DEVICE, SESSION, key)
    sealed = segments(records)
    assert [s.index for s in sealed] == [0, 1]
    for record_ in records:
        if record_.segment is not None:
            decrypt_segment(tmp_path / SESSION, record_, archive)
    kinds = [r.kind for r in records]
    if where == "manifest":
        assert kinds[-1] == "segment"  # nothing more fitted; segment 2 is sealed, unlisted
        assert (tmp_path / SESSION / "000002.mkv.age").exists()
    else:
        assert kinds[-2:] == ["disk_low", "stop"]
        assert records[-2].detail["reason"] == "disk_full"
    assert not list((tmp_path / SESSION).glob("*.tmp"))
    assert plaintext_free(tmp_path) == []
    # Sources keep publishing; the stopped recorder takes nothing more.
    size = (tmp_path / SESSION / FILENAME).stat().st_size
    await sources.play(1.0)
    assert (tmp_path / SESSION / FILENAME).stat().st_size == size
