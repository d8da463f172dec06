"""The segment recorder: media from fanouts into sealed, self-contained Matroska segments.

Used by the box (what it sends and receives) and by the controller's bridge (the composed
session), so it knows nothing of agents: it takes `Track`s, each a `Fanout` with a title.
Encoded H.264 is copied as it is (the camera is encoded once, for the call and the recording);
raw audio is encoded to Opus and raw received video re-encoded to H.264 at a reduced rate and
size, each by one long-lived encoder so timestamps and codec state run on across segments.

Every `segment_seconds` the recorder asks the video sources for a key frame and cuts at the
next one, so each segment is a Matroska file a player opens on its own. Timestamps are
milliseconds from the start of the recording (continued after a restart), so an export can
concatenate segments by remuxing their packets unchanged. The open segment lives only in RAM;
a closed one is sealed (age) in a thread and its record appended to the signed manifest. An
OSError there (a full disk) stops the recorder cleanly: what is sealed stays, a `disk_low` and
a `stop` record are appended if the disk still allows, and `on_failure` tells the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeAlias

import av
from av.audio.stream import AudioStream
from av.stream import Stream
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, Record, RecordKind, Segment
from tiepdan.firmware.evidence.sealer import FileSystem, Sealed, Sealer
from tiepdan.firmware.media.fanout import Fanout, Subscription
from tiepdan.firmware.media.h264 import H264Encoder

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)
OPUS_RATE = 48000
OPUS_BITRATE = 32_000
# A source whose timestamps stray this far from the arrival clock has restarted (a new call
# attempt, a new encoder): re-anchor it rather than leave a hole or a pile-up in the timeline.
RESYNC_MS = 1000
# Audio that arrives this much later than its samples account for leaves a gap (not silence).
AUDIO_GAP_MS = 200
# Ask for the key frame a little before the cut is due, so it is there on time.
KEY_LEAD_MS = 150
# How long (wall clock) a cut segment waits for the other tracks' packets timed before the cut,
# which arrive late when a track lags (an encoder in a thread, a jittery source).
SETTLE_S = 1.0
SEGMENT_NAME = re.compile(r"^(\d{6})\.mkv\.age\Z")
QUEUE = 300  # per track: seconds of media, so a slow seal never costs a frame

Mode = Literal["copy", "audio", "video"]
State = Literal["idle", "recording", "stopped", "failed"]


@dataclass(frozen=True)
class Track:
    """One stream of the recording: `title` names it in the file (e.g. `sent-video`)."""

    title: str
    source: Fanout[Any]
    mode: Mode
    width: int = 0  # copy: 0 takes it from the first key frame; video: the recorded size
    height: int = 0
    fps: int = 0  # video: the recorded rate (frames beyond it are skipped)
    bitrate: int = 0
    layout: str = "mono"  # audio

    @classmethod
    def copied(cls, title: str, source: Fanout[av.Packet[Stream]], *, width: int = 0,
               height: int = 0) -> Track:
        """H.264 packets, muxed as they come (never re-encoded)."""
        return cls(title, source, "copy", width=width, height=height)

    @classmethod
    def audio(cls, title: str, source: Fanout[av.AudioFrame], *,
              bitrate: int = OPUS_BITRATE, layout: str = "mono") -> Track:
        """Raw audio frames, encoded to Opus."""
        return cls(title, source, "audio", bitrate=bitrate, layout=layout)

    @classmethod
    def video(cls, title: str, source: Fanout[av.VideoFrame], *, fps: int, width: int,
              height: int, bitrate: int) -> Track:
        """Raw (decoded) video frames, re-encoded to H.264 at `fps` and `width`x`height`."""
        return cls(title, source, "video", width=width, height=height, fps=fps,
                   bitrate=bitrate)

    @property
    def is_video(self) -> bool:
        return self.mode != "audio"


class TrackClock:
    """Maps a source's own timestamps onto the recording's millisecond timeline.

    The source's clock keeps frames evenly spaced (arrival times jitter); the arrival clock
    anchors it, and re-anchors it when the two part by more than RESYNC_MS.
    """

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (source ms, timeline ms)
        self._base: Fraction | None = None
        self._scale = 0.0
        self.last = -1

    def stamp(self, pts: int | None, time_base: Fraction | None, arrival_ms: float) -> int:
        if pts is None or time_base is None:
            ts = arrival_ms
        else:
            if time_base != self._base:  # Fraction arithmetic per packet would dominate
                self._base, self._scale = time_base, float(time_base) * 1000
            source = pts * self._scale
            if self._anchor is not None:
                ts = self._anchor[1] + source - self._anchor[0]
            if self._anchor is None or abs(ts - arrival_ms) > RESYNC_MS:
                if self._anchor is not None:
                    log.info("recorder_clock_resync offset_ms=%d", int(ts - arrival_ms))
                self._anchor = (source, arrival_ms)
                ts = arrival_ms
        stamped = max(int(ts), self.last + 1)
        self.last = stamped
        return stamped


class _OpusEncoder:
    """One Opus encoder for a track's whole recording; segments copy its stream parameters."""

    def __init__(self, bitrate: int, layout: str) -> None:
        # A container that is never written to holds the encoder and the stream template
        # (with the OpusHead extradata that Matroska needs) for every segment's stream.
        self._holder = av.open(io.BytesIO(), "w", format="matroska")
        self.template: AudioStream = self._holder.add_stream("libopus", rate=OPUS_RATE,
                                                             layout=layout)
        self.template.codec_context.bit_rate = bitrate
        self.template.codec_context.open()
        self._holder.start_encoding()
        self._fed = 0  # samples given to the encoder, in its 48 kHz clock
        self._origin: float | None = None  # timeline ms of sample 0
        self._gaps: list[tuple[int, float]] = []  # (from sample, extra ms): holes in the input
        self._shift = 0.0

    def encode(self, frame: av.AudioFrame, ts: int) -> list[tuple[av.Packet[Stream], int]]:
        """Encode one frame stamped `ts`; returns packets with their timeline ms."""
        if self._origin is None:
            self._origin = float(ts)
        expected = self._origin + self._fed * 1000 / OPUS_RATE + self._shift
        if ts - expected > AUDIO_GAP_MS:
            self._shift += ts - expected
            self._gaps.append((self._fed, self._shift))
        elif expected - ts > RESYNC_MS:
            return []  # more audio than time has passed: a burst of stale frames
        copy = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name,
                                          layout=frame.layout.name)
        copy.sample_rate = frame.sample_rate
        copy.pts = self._fed * frame.sample_rate // OPUS_RATE
        copy.time_base = Fraction(1, frame.sample_rate)
        self._fed += frame.samples * OPUS_RATE // frame.sample_rate
        out = []
        for packet in self.template.codec_context.encode(copy):
            pts = packet.pts or 0
            shift = 0.0
            for start, extra in self._gaps:
                if pts >= start:
                    shift = extra
            out.append((packet, int(self._origin + pts * 1000 / OPUS_RATE + shift)))
        if len(self._gaps) > 1:
            self._gaps = [g for g in self._gaps if g[0] > self._fed - OPUS_RATE] or \
                self._gaps[-1:]
        return out

    def close(self) -> None:
        self._holder.close()


def _h264_size(packet: av.Packet[Stream]) -> tuple[int, int]:
    """The picture size a key frame's SPS declares."""
    decoder = av.CodecContext.create("h264", "r")
    frames = [*decoder.decode(av.Packet(bytes(packet))), *decoder.decode(None)]
    if not frames:
        raise ValueError("key frame does not decode")
    frame = frames[0]
    assert isinstance(frame, av.VideoFrame)
    return frame.width, frame.height


Item: TypeAlias = "tuple[int, av.Packet[Stream], int]"  # (track, packet, timeline ms)


@dataclass
class _Open:
    """The segment being recorded: its packets, held in RAM until the cut."""

    index: int
    start_ms: int
    started: list[bool]  # per track: has a video track had its key frame here yet
    items: list[Item] = field(default_factory=list)
    key_requested: bool = False
    end_ms: int = 0
    cut_ms: int | None = None  # set at the cut: the next segment's start
    behind: set[int] = field(default_factory=set)  # tracks not yet past the cut
    settled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Closed:
    index: int
    start_ms: int
    duration_ms: int
    items: list[Item]
    audio: list[AudioStream | None]  # per track: the Opus stream to copy parameters from
    settled: asyncio.Event  # no more late packets will join `items`


@dataclass
class Counters:
    segments: int = 0
    bytes: int = 0  # ciphertext sealed to disk
    plain_bytes: int = 0
    skipped: int = 0  # packets that could not start a segment (before a key frame)
    lost_segments: int = 0  # closed but never sealed (the disk failed)
    dropped_by_track: dict[str, int] = field(default_factory=dict)


class SegmentRecorder:
    """Records `tracks` into `directory` (sealed segments + manifest) until `stop()`."""

    def __init__(self, directory: Path, tracks: Sequence[Track], *, device: str, session: str,
                 key: Ed25519PrivateKey, recipients: Sequence[str], boot_id: str,
                 segment_seconds: float = 2.0, clock_synced: Callable[[], bool] = lambda: False,
                 fs: FileSystem | None = None, clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[BaseException], None] | None = None,
                 min_free_bytes: int = 0, queue: int = QUEUE,
                 sealer: Sealer | None = None) -> None:
        if not tracks:
            raise ValueError("nothing to record: no tracks")
        self.directory = directory
        self.tracks = list(tracks)
        self.device = device
        self.session = session
        self.segment_ms = int(segment_seconds * 1000)
        # SealError here: never record what nobody can decrypt.
        self.sealer = sealer or Sealer(recipients, fs)
        self.fs = self.sealer.fs
        self.counters = Counters()
        self.state: State = "idle"
        self.failure: BaseException | None = None
        self.manifest: Manifest | None = None
        self._key = key
        self._boot_id = boot_id
        self._clock_synced = clock_synced
        self._clock = clock
        self._on_failure = on_failure
        self._queue = queue
        self._min_free = min_free_bytes  # stop cleanly before the disk is wholly full
        self._primary = next((i for i, t in enumerate(tracks) if t.mode == "copy"),
                             next((i for i, t in enumerate(tracks) if t.is_video), -1))
        self._clocks = [TrackClock() for _ in tracks]
        self._opus: list[_OpusEncoder | None] = [None] * len(tracks)
        self._h264: list[H264Encoder | None] = [None] * len(tracks)
        self._sizes: list[tuple[int, int] | None] = [
            (t.width, t.height) if t.width and t.height else None for t in tracks]
        self._next_frame_ms = [0.0] * len(tracks)
        self._subscriptions: list[Subscription[Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sealing: asyncio.Queue[_Closed | None] = asyncio.Queue()
        self._sealer_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._open: _Open | None = None
        self._settling: _Open | None = None  # the last cut segment, still taking late packets
        self._next_index = 0
        self._base_ms = 0
        self._t0 = 0.0
        self._utc0 = 0
        self._stopping = False
        self._stop_written = False

    # -- public ----------------------------------------------------------------------------------

    async def start(self, detail: dict[str, str | int | bool] | None = None) -> None:
        """Open (or continue) the manifest, write `start`, and begin taking media."""
        if self.state != "idle":
            raise RuntimeError(f"recorder already {self.state}")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manifest = await asyncio.to_thread(
            self.fs.open_manifest, self.directory / FILENAME, device=self.device,
            session=self.session, key=self._key, boot_id=self._boot_id,
            clock_synced=self._clock_synced)
        self._continue_from(self.manifest.records)
        self._t0 = self._clock()
        self._utc0 = int(time.time() * 1000)
        info: dict[str, str | int | bool] = {
            "tracks": ",".join(t.title for t in self.tracks),
            "segment_ms": self.segment_ms, "timeline_ms": self._base_ms,
            "first_index": self._next_index, "resumed": bool(self.manifest.records)}
        self.state = "recording"
        try:
            await self.append("start", detail={**info, **(detail or {})})
        except OSError as exc:
            self.state = "failed"
            self.failure = exc
            raise
        self._sealer_task = asyncio.create_task(self._seal_loop(), name="recorder-seal")
        for index, track in enumerate(self.tracks):
            subscription = track.source.subscribe(f"recorder-{self.session}", self._queue)
            self._subscriptions.append(subscription)
            self._tasks.append(asyncio.create_task(self._take(index, subscription),
                                                   name=f"recorder-{track.title}"))
        log.info("recorder_start device=%s session=%s dir=%s tracks=%s timeline_ms=%d "
                 "first_index=%d", self.device, self.session, self.directory, info["tracks"],
                 self._base_ms, self._next_index)

    async def stop(self, reason: str = "ended") -> None:
        """Seal the open segment and write `stop`; after a failure, release what is held."""
        if self.state in ("idle", "stopped") or self._stopping:
            return
        self._stopping = True
        recording = self.state == "recording"
        if recording:
            self.state = "stopped"
        await self._halt_tracks()
        if recording:
            self._close_open(self.now_ms())
        await self._drain()
        if not self._stop_written:
            if self.failure is not None:
                reason = f"error: {self.failure}"[:200]
            with contextlib.suppress(OSError):
                await self._append_stop(reason)
        await self._release()
        log.info("recorder_stop device=%s session=%s reason=%s segments=%d bytes=%d "
                 "dropped=%d lost_segments=%d", self.device, self.session, reason,
                 self.counters.segments, self.counters.bytes, self.dropped,
                 self.counters.lost_segments)

    async def append(self, kind: RecordKind, *,
                     detail: dict[str, str | int | bool] | None = None,
                     segment: Segment | None = None) -> Record:
        """Append a record to this recording's manifest (the one writer while it is open)."""
        if self.manifest is None:
            raise RuntimeError("recorder not started")
        manifest = self.manifest
        async with self._lock:
            return await asyncio.to_thread(manifest.append, kind, segment=segment,
                                           detail=detail)

    def now_ms(self) -> int:
        return self._base_ms + int((self._clock() - self._t0) * 1000)

    @property
    def open_index(self) -> int | None:
        """The index of the segment being recorded (RAM only), if any."""
        return None if self._open is None else self._open.index

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subscriptions) + \
            sum(self.counters.dropped_by_track.values()) + self.counters.skipped

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "session": self.session, "segments":
                self.counters.segments, "bytes": self.counters.bytes, "dropped": self.dropped,
                "pending": self._sealing.qsize(),
                "failure": None if self.failure is None else str(self.failure)}

    # -- resuming --------------------------------------------------------------------------------

    def _continue_from(self, records: list[Record]) -> None:
        """After a restart in the same session: the timeline and the numbering run on."""
        index, end_ms = -1, -1
        for record in records:
            if record.segment is not None:
                index = max(index, record.segment.index)
                end_ms = max(end_ms, int(record.detail.get("end_ms", 0)))
        for path in self.directory.iterdir():
            match = SEGMENT_NAME.fullmatch(path.name)
            if match:  # sealed but never recorded (a crash between rename and append)
                index = max(index, int(match[1]))
        self._next_index = index + 1
        if records:
            since_first = int(time.time() * 1000) - records[0].utc_ms
            self._base_ms = max(end_ms + 1, since_first, 0)

    # -- taking media ----------------------------------------------------------------------------

    async def _take(self, index: int, subscription: Subscription[Any]) -> None:
        track = self.tracks[index]
        try:
            while True:
                item = await subscription.get()
                if item is None:
                    return
                arrival = self.now_ms()
                if track.mode == "copy":
                    self._copy(index, item, arrival)
                elif track.mode == "audio":
                    self._audio(index, item, arrival)
                else:
                    await self._video(index, item, arrival)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("recorder_track_failed session=%s track=%s", self.session,
                          track.title)
            self._fail(exc)

    def _copy(self, index: int, packet: av.Packet[Stream], arrival: int) -> None:
        ts = self._clocks[index].stamp(packet.pts, packet.time_base, arrival)
        key = bool(packet.is_keyframe)
        copy = av.Packet(bytes(packet))  # the call's sender holds the same packet
        copy.is_keyframe = key
        self._add(index, copy, ts, key)

    def _audio(self, index: int, frame: av.AudioFrame, arrival: int) -> None:
        ts = self._clocks[index].stamp(frame.pts, frame.time_base, arrival)
        if self._open is None:
            return  # nothing to add audio to before the first key frame
        opus = self._opus[index]
        if opus is None:
            track = self.tracks[index]
            opus = self._opus[index] = _OpusEncoder(track.bitrate, track.layout)
        for packet, packet_ts in opus.encode(frame, ts):
            self._add(index, packet, packet_ts, True)

    async def _video(self, index: int, frame: av.VideoFrame, arrival: int) -> None:
        track = self.tracks[index]
        ts = self._clocks[index].stamp(frame.pts, frame.time_base, arrival)
        if ts < self._next_frame_ms[index]:
            return  # above the recorded rate
        self._next_frame_ms[index] = max(self._next_frame_ms[index] + 1000 / track.fps,
                                         ts - 1000 / track.fps + 1)
        encoder = self._h264[index]
        if encoder is None:
            encoder = self._h264[index] = H264Encoder(
                track.width, track.height, track.fps, track.bitrate, keyframe_interval=60,
                min_key_spacing=0)
        segment = self._open
        if segment is not None and ts >= segment.start_ms and not segment.started[index]:
            encoder.request_key()  # this frame starts the track in the segment
        for packet in await asyncio.to_thread(_encode_copy, encoder, frame, track, ts):
            stamped = ts if packet.pts is None else packet.pts // 90
            self._add(index, packet, stamped, bool(packet.is_keyframe))

    def _add(self, index: int, packet: av.Packet[Stream], ts: int, key: bool) -> None:
        """Put a packet in the open segment, cutting first when it is the primary's key."""
        track = self.tracks[index]
        if track.is_video and self._sizes[index] is None:
            if not key:
                self.counters.skipped += 1
                return
            self._sizes[index] = _h264_size(packet)
        if index == self._primary or self._primary < 0:
            self._maybe_cut(ts, key)
        segment = self._open
        if segment is None:
            if index == self._primary:
                self.counters.skipped += 1
            return
        if index != self._primary and self._primary >= 0:
            segment = self._route(index, ts, key, segment)
        if track.is_video and not segment.started[index]:
            if not key:
                self.counters.skipped += 1
                return
            segment.started[index] = True
        segment.items.append((index, packet, ts))
        segment.end_ms = max(segment.end_ms, ts)

    def _route(self, index: int, ts: int, key: bool, open_: _Open) -> _Open:
        """The segment a non-primary packet belongs to: by its time, not by when it came.

        A packet timed before the last cut joins the segment that cut closed, while that one
        settles. A video track starts the new segment only at a key frame; until then its
        frames continue their group of pictures in the settling segment rather than being
        lost, so a segment may hold a frame or two of such a track past its end.
        """
        settling = self._settling
        if settling is None or settling.cut_ms is None:
            return open_
        if ts < settling.cut_ms:
            return settling
        video = self.tracks[index].is_video
        if video and not key and not open_.started[index] and settling.started[index]:
            return settling
        settling.behind.discard(index)
        if not settling.behind:
            self._settle(settling)
        return open_

    def _maybe_cut(self, ts: int, key: bool) -> None:
        segment = self._open
        if segment is None:
            if key or self._primary < 0:
                self._open_segment(ts)
            return
        due = segment.start_ms + self.segment_ms
        if not segment.key_requested and ts >= due - KEY_LEAD_MS:
            segment.key_requested = True
            self._request_keys()
        if ts >= due - KEY_LEAD_MS and (key or self._primary < 0):
            # Audio that came before this key but is timed after it moves on with it.
            early = [item for item in segment.items
                     if item[2] >= ts and not self.tracks[item[0]].is_video]
            if early:
                segment.items = [item for item in segment.items
                                 if item[2] < ts or self.tracks[item[0]].is_video]
            self._close_open(ts, cut=True)
            self._open_segment(ts)
            assert self._open is not None
            self._open.items.extend(early)

    def _request_keys(self) -> None:
        """Ask the copied sources for a key frame: it ends this segment and starts the next."""
        for track in self.tracks:
            if track.mode == "copy":
                track.source.request_key()

    # -- segments --------------------------------------------------------------------------------

    def _open_segment(self, start_ms: int) -> None:
        self._open = _Open(index=self._next_index, start_ms=start_ms,
                           started=[False] * len(self.tracks), end_ms=start_ms)
        self._next_index += 1

    def _close_open(self, end_ms: int, *, cut: bool = False) -> None:
        """Hand the open segment to sealing. At a cut it ends where the next one begins, so
        segments tile the timeline; it settles (takes the other tracks' late packets) first."""
        segment, self._open = self._open, None
        if self._settling is not None:
            self._settle(self._settling)
        if segment is None:
            return
        audio = [None if opus is None else opus.template for opus in self._opus]
        if cut and self._primary >= 0:
            duration = end_ms - segment.start_ms
            segment.cut_ms = end_ms
            segment.behind = {i for i in range(len(self.tracks)) if i != self._primary}
            self._settling = segment
            asyncio.get_running_loop().call_later(SETTLE_S, self._settle, segment)
        else:
            duration = max(end_ms, segment.end_ms) - segment.start_ms
            segment.settled.set()
        self._sealing.put_nowait(_Closed(segment.index, segment.start_ms, duration,
                                         segment.items, audio, segment.settled))
        if self._sealing.qsize() > 4:
            log.warning("recorder_seal_backlog session=%s segments=%d", self.session,
                        self._sealing.qsize())

    def _settle(self, segment: _Open) -> None:
        """No more late packets for `segment`: it may be sealed."""
        segment.settled.set()
        if self._settling is segment:
            self._settling = None

    def _mux(self, closed: _Closed) -> bytes:
        """The segment as a Matroska file in RAM (in the sealing thread).

        A video stream takes its parameter sets from its first packet (a key frame, by
        construction), a copied one its size too (our own encoders' size is fixed); a track
        with nothing in this segment's time is absent from it.
        """
        present = {index for index, _, _ in closed.items}
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="matroska") as container:
            container.metadata["title"] = f"{self.device} {self.session} {closed.index:06d}"
            streams: dict[int, Stream] = {}
            for index, track in enumerate(self.tracks):
                size, opus = self._sizes[index], closed.audio[index]
                if index not in present:
                    continue
                if track.mode == "copy":  # adaptive bitrate may have changed its size since
                    first = next(packet for i, packet, _ in closed.items if i == index)
                    with contextlib.suppress(ValueError, av.FFmpegError):
                        size = _h264_size(first)
                if track.is_video and size is not None:
                    stream: Stream = container.add_mux_stream("h264", width=size[0],
                                                              height=size[1])
                    stream.time_base = MS
                elif opus is not None:
                    stream = container.add_stream_from_template(opus)
                else:
                    continue
                stream.metadata["title"] = track.title
                streams[index] = stream
            for index, packet, ts in sorted(closed.items, key=lambda item: item[2]):
                packet.pts = packet.dts = ts
                packet.time_base = MS
                packet.stream = streams[index]
                container.mux(packet)
        return buffer.getvalue()

    def _seal(self, closed: _Closed, name: str) -> Sealed:
        return self.sealer.seal(self.directory, name, self._mux(closed))

    async def _seal_loop(self) -> None:
        while (closed := await self._sealing.get()) is not None:
            if self.failure is not None:
                self.counters.lost_segments += 1
                continue
            name = f"{closed.index:06d}.mkv.age"
            await closed.settled.wait()
            try:
                sealed = await asyncio.to_thread(self._seal, closed, name)
                segment = Segment(
                    name=name, index=closed.index, ct_sha256=sealed.ct_sha256,
                    ct_size=sealed.ct_size, pt_sha256=sealed.pt_sha256, pt_size=sealed.pt_size,
                    start_utc_ms=self._utc0 + closed.start_ms - self._base_ms,
                    duration_ms=closed.duration_ms)
                await self.append("segment", segment=segment, detail={
                    "start_ms": closed.start_ms, "end_ms": closed.start_ms + closed.duration_ms})
            except OSError as exc:
                self.counters.lost_segments += 1
                await self._disk_failed(exc, name)
                continue
            self.counters.segments += 1
            self.counters.bytes += sealed.ct_size
            self.counters.plain_bytes += sealed.pt_size
            log.debug("recorder_segment session=%s name=%s pt=%d ct=%d duration_ms=%d",
                      self.session, name, sealed.pt_size, sealed.ct_size, closed.duration_ms)
            if self._min_free and await asyncio.to_thread(
                    self.fs.free_bytes, self.directory) < self._min_free:
                await self._disk_failed(OSError(errno.ENOSPC, "free space below the reserve"),
                                        name)

    async def _disk_failed(self, exc: OSError, name: str) -> None:
        """Stop cleanly: keep what is sealed, say why in the manifest if the disk lets us."""
        reason = "disk_full" if exc.errno == errno.ENOSPC else "disk_error"
        log.error("recorder_disk_failed session=%s segment=%s reason=%s error=%s",
                  self.session, name, reason, exc.strerror or exc)
        self._fail(exc)
        try:
            await self.append("disk_low", detail={
                "reason": reason, "errno": exc.errno or 0, "segment": name,
                "segments": self.counters.segments})
            await self._append_stop(reason)
        except OSError as again:
            log.error("recorder_manifest_unwritable session=%s error=%s", self.session,
                      again.strerror or again)

    async def _append_stop(self, reason: str) -> None:
        await self.append("stop", detail={
            "reason": reason, "segments": self.counters.segments, "bytes": self.counters.bytes,
            "dropped": self.dropped, "lost_segments": self.counters.lost_segments})
        self._stop_written = True

    async def _drain(self) -> None:
        """Let the sealing task finish what is queued, then end it."""
        task = self._sealer_task
        if task is not None and not task.done():
            await self._sealing.put(None)
            await task

    def _fail(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        self.state = "failed"
        if self._settling is not None:
            self._settle(self._settling)
        segment, self._open = self._open, None
        if segment is not None:
            self.counters.lost_segments += 1  # the open one: plaintext in RAM, now dropped
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for subscription in self._subscriptions:
            subscription.close()
        if self._on_failure is not None:
            try:
                self._on_failure(exc)
            except Exception:
                log.exception("recorder_failure_callback_failed session=%s", self.session)

    async def _halt_tracks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subscription in self._subscriptions:
            subscription.close()

    async def _release(self) -> None:
        await self._halt_tracks()
        await self._drain()
        for opus in self._opus:
            if opus is not None:
                with contextlib.suppress(Exception):
                    opus.close()
        self._opus = [None] * len(self.tracks)
        self._h264 = [None] * len(self.tracks)
        if self.manifest is not None:
            self.manifest.close()


def _encode_copy(encoder: H264Encoder, frame: av.VideoFrame, track: Track,
                 ts: int) -> list[av.Packet[Stream]]:
    """Encode a received frame without touching it (other subscribers share it)."""
    scaled = frame.reformat(width=track.width, height=track.height, format="yuv420p")
    if scaled is frame:
        scaled = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    scaled.pts = ts
    scaled.time_base = MS
    return encoder.encode(scaled)
