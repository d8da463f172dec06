"""The bridge's own recording of every session: the composed picture and the full mix.

When a session's media starts on the bridge, a `SegmentRecorder` (the box's recorder, recorder
id `controller-<id>`, signed with the controller's key, sealed to the archive's recipients)
writes into `<archive dir>/staging/<session>/`; every second its new records and sealed
segments go into the archive through the very checks a box's upload meets (`ingest_records`,
`ingest_file`), and a staged segment is removed once the archive holds it. The recording stops
when the session ends. A controller that died mid-session finds the staging directory on its
next start: it appends a `recovered` record (the manifest had no `stop`) and ingests the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.controller.sessions.bridge import BridgeSession
from tiepdan.controller.sessions.engine import Session
from tiepdan.errors import TiepdanError
from tiepdan.firmware.evidence.manifest import FILENAME, Manifest, parse_line
from tiepdan.firmware.evidence.recorder import SegmentRecorder, Track

if TYPE_CHECKING:
    from tiepdan.controller.archive.store import Archive
    from tiepdan.controller.config import ArchiveSection, BridgeSection

log = logging.getLogger(__name__)

INGEST_EVERY = 1.0


class BridgeRecording:
    """Records each session's composed picture and full mix at the centre; `on_media` and
    `on_session` are connected to the bridge and the sessions by the composition root."""

    def __init__(self, archive: Archive, bridge: BridgeSection, settings: ArchiveSection,
                 signing_key: Path) -> None:
        self._archive = archive
        self._bridge = bridge
        self._settings = settings
        self._signing_key = signing_key
        self.recorder_id = self._archive.recorder_id
        self.staging = self._archive.dir / "staging"
        self._boot_id = uuid.uuid4().hex
        self._recorders: dict[str, SegmentRecorder] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Future[None]] = set()
        self.enabled = settings.record_bridge

    def _key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self._signing_key.read_bytes(),
                                                 password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def on_media(self, session_id: str, media: BridgeSession) -> None:
        if session_id in self._recorders:
            return
        bridge = self._bridge
        recorder = SegmentRecorder(
            self.staging / session_id,
            [Track.copied("composed-video", media.composed_video, width=bridge.width,
                          height=bridge.height),
             Track.audio("mixed-audio", media.mixed_audio)],
            device=self.recorder_id, session=session_id, key=self._key(),
            recipients=self._archive.recipients, boot_id=self._boot_id,
            segment_seconds=self._settings.segment_seconds,
            clock_synced=lambda: True,
            on_failure=lambda exc: log.error("bridge_recording_failed session=%s error=%s",
                                             session_id, exc))
        self._recorders[session_id] = recorder
        self._tasks[session_id] = asyncio.ensure_future(self._run(session_id, recorder))

    def on_session(self, session: Session, old: str | None, new: str) -> None:
        if new == "ended" and session.id in self._recorders:
            stopping = asyncio.ensure_future(self.stop(session.id))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    async def _run(self, session_id: str, recorder: SegmentRecorder) -> None:
        try:
            await recorder.start({"source": "bridge"})
        except Exception:
            log.exception("bridge_recording_start_failed session=%s", session_id)
            return
        log.info("bridge_recording_start session=%s recorder=%s", session_id, self.recorder_id)
        while True:
            await asyncio.sleep(INGEST_EVERY)
            await self._ingest_logged(session_id)

    async def stop(self, session_id: str) -> None:
        recorder = self._recorders.pop(session_id, None)
        task = self._tasks.pop(session_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if recorder is None:
            return
        await recorder.stop("session_ended")
        await self._ingest_logged(session_id, final=True)
        log.info("bridge_recording_stop session=%s segments=%d", session_id,
                 recorder.counters.segments)

    async def _ingest_logged(self, session_id: str, final: bool = False) -> None:
        try:
            await asyncio.to_thread(self.ingest, session_id, final)
        except (TiepdanError, OSError) as exc:
            log.error("bridge_recording_ingest_failed session=%s error=%s", session_id, exc)

    def ingest(self, session_id: str, final: bool = False) -> int:
        """Move what the recorder sealed into the archive; returns segments moved."""
        directory = self.staging / session_id
        manifest = directory / FILENAME
        if not manifest.exists():
            return 0
        lines = manifest.read_bytes().split(b"\n")[:-1]
        start = self._archive.next_seq(session_id, self.recorder_id)
        self._archive.ingest_records(session_id, self.recorder_id, lines[start:])
        moved = 0
        for line in lines:
            record = parse_line(line)
            if record.segment is None:
                continue
            path = directory / record.segment.name
            if path.exists():
                self._archive.ingest_file(session_id, self.recorder_id, record.segment.name,
                                          path)
                path.unlink()
                moved += 1
        if final:
            shutil.rmtree(directory, ignore_errors=True)
        return moved

    def recover(self) -> None:
        """Staged recordings a dead controller left: end them (`recovered`) and ingest them."""
        if not self.staging.is_dir():
            return
        for directory in sorted(p for p in self.staging.iterdir() if p.is_dir()):
            session_id = directory.name
            if session_id in self._recorders:
                continue
            path = directory / FILENAME
            try:
                if path.exists():
                    self._recovered(path, session_id)
                self.ingest(session_id, final=True)
            except (TiepdanError, OSError) as exc:
                log.error("bridge_recording_recover_failed session=%s error=%s", session_id,
                          exc)

    def _recovered(self, path: Path, session_id: str) -> None:
        manifest = Manifest(path, device=self.recorder_id, session=session_id, key=self._key(),
                            boot_id=self._boot_id, clock_synced=lambda: True)
        try:
            kinds = [r.kind for r in manifest.records
                     if r.kind in ("start", "segment", "stop", "recovered")]
            if kinds and kinds[-1] not in ("stop", "recovered"):
                manifest.append("recovered", detail={"reason": "controller_restarted"})
                log.warning("bridge_recording_recovered session=%s", session_id)
        finally:
            manifest.close()

    async def close(self) -> None:
        await asyncio.gather(*self._stopping, return_exceptions=True)
        for session_id in list(self._recorders):
            await self.stop(session_id)
