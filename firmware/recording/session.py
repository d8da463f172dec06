"""The box's recording: what it sends and receives, recorded while it is in a session.

`BoxRecording` follows the call client: when media flows (`on_live`) it starts a
`SegmentRecorder` on the box's four tracks into `<recording_dir>/<session>/`, signed with the
box's key and sealed to the recipients the controller signed (`firmware.recipients`); when the
box leaves (`on_left`) it stops it cleanly. The recording LED is lit meanwhile, and the agent
holds off disruptive work (updates).

Nothing is recorded without valid recipients (never plaintext): the box raises an alarm
instead. Disk policy: before a session, the free space is checked against
`max_session_minutes` at the expected bitrate plus `reserve_mb`; if short, the box warns
(`disk_low`) and records anyway. When the disk fills (ENOSPC, or less than `reserve_mb` left)
the recorder stops cleanly, keeping every sealed segment; the box raises a `disk_full` alarm
and the recording LED shows the error pattern. Nothing here deletes a sealed segment.

On agent start every session directory is recovered from a crash: a torn manifest tail is
cut off, leftover `*.tmp` files (incomplete ciphertext) are removed, and a `recovered` record
says what was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import FILENAME, Record
from tiepdan.firmware.evidence.recipients import Recipients
from tiepdan.firmware.evidence.recorder import OPUS_BITRATE, SEGMENT_NAME, SegmentRecorder, Track
from tiepdan.firmware.evidence.sealer import TMP_SUFFIX, FileSystem, SealError

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent
    from tiepdan.firmware.call.client import CallClient
    from tiepdan.firmware.recording.uploader import Uploader

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Bits per pixel per frame for the re-encoded received picture (a talking-heads mosaic).
RECEIVED_BPP = 0.1
# Matroska and age framing on top of the media bitrates.
CONTAINER_OVERHEAD = 1.03


class BoxRecording:
    """Records the box's side of each session it is live in; `on_live` and `on_left` are
    connected to the call by the composition root."""

    def __init__(self, agent: Agent, call: CallClient, uploader: Uploader) -> None:
        self._agent = agent
        self._call = call
        self._uploader = uploader
        self.config = agent.config.recording
        self.directory = agent.config.recording_dir
        self.fs = FileSystem()  # the OS seam: tests swap it to inject a full disk
        self.recorder: SegmentRecorder | None = None
        self.alarm: protocol.RecordingAlarmCode | None = None
        self.measured_bps: float | None = None  # of the last session, for the disk check
        self._wanted: str | None = None  # the session the box is in, as the call says
        self._full: str | None = None  # the session whose recording the full disk stopped
        self._task: asyncio.Task[None] | None = None

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        recorder = self.recorder
        status: dict[str, Any] = {"enabled": self.config.enabled, "alarm": self.alarm,
                                  "dir": str(self.directory)}
        if recorder is not None:
            status.update(recorder.status())
        else:
            status["state"] = "idle"
        return status

    @property
    def recording(self) -> bool:
        return self.recorder is not None and self.recorder.state == "recording"

    def expected_bps(self) -> float:
        """Bits per second a session costs on disk: measured last time, or from the settings."""
        if self.measured_bps:
            return self.measured_bps
        received = RECEIVED_BPP * self.config.received_width * self.config.received_height * \
            self.config.received_fps
        return (self._agent.config.call.video_bitrate + received + 2 * OPUS_BITRATE) * \
            CONTAINER_OVERHEAD

    # -- following the call ----------------------------------------------------------------------

    def on_live(self, session: str, call: str) -> None:
        self.begin(session)

    def on_left(self, session: str) -> None:
        self.end(session)

    def begin(self, session: str) -> None:
        """Record `session` (the call went live); a repeat for the same session is a rejoin."""
        if session in (self._wanted, self._full):
            return  # the recording runs on (or stays stopped on a full disk)
        self._wanted = session
        self._run(self._start(session))

    def end(self, session: str, reason: str = "left") -> None:
        """The box left `session`: seal what is open and write `stop`."""
        if session == self._wanted:
            self._wanted = None
            self._run(self._stop(reason))

    def _run(self, coro: Any) -> None:
        """Start and stop in order, one at a time, off the call client's callbacks."""
        previous = self._task

        async def after() -> None:
            if previous is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await previous
            await coro

        self._task = asyncio.ensure_future(after())
        self._task.add_done_callback(_log_failure)

    async def _start(self, session: str) -> None:
        await self._stop("session changed")
        if not self.config.enabled:
            log.info("recording_disabled session=%s", session)
            return
        recipients = Recipients(self._agent.config.state_dir).current()
        if not recipients:
            log.error("recording_refused session=%s reason=no_recipients", session)
            self._raise("no_recipients", "critical", session,
                        "no valid signed recipients: the session is NOT recorded")
            return
        call = self._call
        tracks = [
            Track.copied("sent-video", call.sent_video),
            Track.audio("sent-audio", call.sent_audio),
            Track.copied("received-video", call.received_encoded)
            if self.config.received == "copy" else
            Track.video("received-video", call.received_video, fps=self.config.received_fps,
                        width=self.config.received_width, height=self.config.received_height,
                        bitrate=int(RECEIVED_BPP * self.config.received_width *
                                    self.config.received_height * self.config.received_fps)),
            Track.audio("received-audio", call.received_audio),
        ]
        directory = self.directory / session
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            recorder = SegmentRecorder(
                directory, tracks, device=self._agent.device, session=session,
                key=Identity(self._agent.config.state_dir).signing_key(),
                recipients=recipients, boot_id=self._agent.boot_id,
                segment_seconds=self.config.segment_seconds, clock_synced=self._clock_synced,
                fs=self.fs, on_failure=lambda exc: self._failed(session, exc),
                min_free_bytes=self.config.reserve_mb * MB)
        except SealError as exc:
            log.error("recording_refused session=%s reason=%s", session, exc)
            self._raise("no_recipients", "critical", session, f"not recorded: {exc}")
            return
        self.recorder = recorder
        free, needed = self._space()
        detail: dict[str, str | int | bool] = {"free_mb": free // MB, "needed_mb": needed // MB}
        try:
            await recorder.start(detail=detail)
            if free < needed:
                log.warning("recording_disk_low session=%s free_mb=%d needed_mb=%d", session,
                            free // MB, needed // MB)
                await recorder.append("disk_low", detail={"reason": "short_for_max_session",
                                                          **detail})
                self._raise("disk_low", "warning", session,
                            f"{free // MB} MB free, a {self.config.max_session_minutes} min "
                            f"session needs {needed // MB} MB: recording until full",
                            free_mb=free // MB)
        except OSError as exc:
            self._failed(session, exc)
            return
        self._agent.hold("recording")
        self._uploader.attach(session, recorder)
        if self.alarm in ("disk_full", "no_recipients", "recorder_failed"):
            self._clear(session)
        self._agent.indicators.update(recording=True)
        log.info("recording_started device=%s session=%s dir=%s", self._agent.device, session,
                 directory)

    async def _stop(self, reason: str) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        await recorder.stop(reason)
        self._uploader.detach(recorder.session)
        elapsed_s = recorder.now_ms() / 1000
        if recorder.counters.segments and elapsed_s > 10:
            self.measured_bps = recorder.counters.bytes * 8 / elapsed_s
        self.recorder = None
        self._agent.release("recording")
        self._agent.indicators.update(recording=False)
        log.info("recording_stopped device=%s session=%s reason=%s segments=%d bytes=%d "
                 "dropped=%d", self._agent.device, recorder.session, reason,
                 recorder.counters.segments, recorder.counters.bytes, recorder.dropped)

    def _failed(self, session: str, exc: BaseException) -> None:
        """The recorder stopped itself (full disk, fault): alarm, error light, let go."""
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        code: protocol.RecordingAlarmCode = "disk_full" if full else "recorder_failed"
        free = self._free()
        log.error("recording_failed device=%s session=%s code=%s free_mb=%s error=%s",
                  self._agent.device, session, code, None if free is None else free // MB,
                  exc)
        segments = self.recorder.counters.segments if self.recorder is not None else 0
        self._raise(code, "critical", session,
                    "recording stopped: disk full, sealed segments kept" if full else
                    f"recording stopped: {exc}"[:200], segments=segments,
                    free_mb=None if free is None else free // MB)
        self._agent.release("recording")
        if full:
            self._full = session
        self._run(self._stop(code))

    # -- alarms ----------------------------------------------------------------------------------

    def _raise(self, code: protocol.RecordingAlarmCode, severity: str, session: str,
               message: str, *, segments: int = 0, free_mb: int | None = None) -> None:
        if severity == "critical":
            self._agent.indicators.update(recording=False, alarm=True)
        self.alarm = code
        self._agent.outbox.send(protocol.RecordingAlarm(
            code=code, severity=severity, message=message,  # type: ignore[arg-type]
            session=session, segments=segments, free_mb=free_mb))

    def _clear(self, session: str) -> None:
        code, self.alarm = self.alarm, None
        self._agent.indicators.update(alarm=False)
        if code is not None:
            self._agent.outbox.send(protocol.RecordingAlarm(
                code=code, severity="info", message="recording again", session=session,
                active=False))

    # -- disk ------------------------------------------------------------------------------------

    def _free(self) -> int | None:
        try:
            return self.fs.free_bytes(self.directory)
        except OSError:
            return None

    def _space(self) -> tuple[int, int]:
        """(free, needed) bytes for a session of the longest allowed length."""
        needed = int(self.expected_bps() / 8 * self.config.max_session_minutes * 60) + \
            self.config.reserve_mb * MB
        free = self._free()
        return (needed if free is None else free), needed

    def _clock_synced(self) -> bool:
        latest = self._agent.telemetry.latest
        return bool(latest and latest.clock_synced)

    # -- crash recovery --------------------------------------------------------------------------

    def recover(self) -> None:
        """Make every session directory consistent after a crash or power cut (blocking)."""
        recover_sessions(self.directory, self.fs, device=self._agent.device,
                         key=Identity(self._agent.config.state_dir).signing_key(),
                         boot_id=self._agent.boot_id, clock_synced=self._clock_synced)

    async def run(self) -> None:
        """Lives as long as the agent; on shutdown ends the recording with a `stop` record."""
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._stop("agent stopping")


def recover_sessions(directory: Path, fs: FileSystem, *, device: str, key: Ed25519PrivateKey,
                     boot_id: str, clock_synced: Callable[[], bool]) -> int:
    """Recover every `<directory>/<session>/`; returns how many needed it (blocking)."""
    if not directory.is_dir():
        return 0
    recovered = 0
    for session in sorted(p for p in directory.iterdir() if p.is_dir()):
        try:
            recovered += _recover(session, fs, device=device, key=key, boot_id=boot_id,
                                  clock_synced=clock_synced)
        except OSError as exc:
            log.error("recording_recovery_failed session=%s error=%s", session.name, exc)
    return recovered


def _recover(directory: Path, fs: FileSystem, *, device: str, key: Ed25519PrivateKey,
             boot_id: str, clock_synced: Callable[[], bool]) -> bool:
    removed = 0
    for tmp in directory.glob(f"*{TMP_SUFFIX}"):
        fs.remove(tmp)  # incomplete ciphertext, never listed in the manifest
        removed += 1
    if not (directory / FILENAME).exists():
        if removed:
            log.warning("recording_recovered session=%s tmp_removed=%d manifest=none",
                        directory.name, removed)
        return bool(removed)
    manifest = fs.open_manifest(directory / FILENAME, device=device, session=directory.name,
                                key=key, boot_id=boot_id, clock_synced=clock_synced)
    try:
        listed = {r.segment.name for r in manifest.records if r.segment is not None}
        orphans = sorted(p.name for p in directory.iterdir()
                         if SEGMENT_NAME.fullmatch(p.name) and p.name not in listed)
        clean = _ended_cleanly(manifest.records)
        if clean and not manifest.torn_bytes and not removed and not orphans:
            return False
        if not clean:
            log.warning("recording_unclean_end session=%s records=%d", directory.name,
                        len(manifest.records))
        if orphans:  # sealed and renamed, then the crash came before its record: kept
            log.warning("recording_unlisted_segments session=%s names=%s", directory.name,
                        ",".join(orphans))
        manifest.append("recovered", detail={
            "torn_bytes": manifest.torn_bytes, "tmp_removed": removed, "clean_stop": clean,
            "unlisted": ",".join(orphans)[:500]})
        log.warning("recording_recovered session=%s torn_bytes=%d tmp_removed=%d "
                    "clean_stop=%s unlisted=%d", directory.name, manifest.torn_bytes, removed,
                    clean, len(orphans))
        return True
    finally:
        manifest.close()


def _ended_cleanly(records: list[Record]) -> bool:
    """Whether the last `start` was followed by `stop` (or recovered already)."""
    for record in reversed(records):
        if record.kind in ("stop", "recovered"):
            return True
        if record.kind == "start":
            return False
    return True


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("recording_task_failed error=%r", task.exception(),
                  exc_info=task.exception())
