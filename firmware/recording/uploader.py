"""Moving sealed recordings to the central archive, and deleting them only once it is safe.

Every pass walks `<recording_dir>/<session>/`: it sends the manifest records the archive lacks
(it asks the archive where its copy ends), uploads every sealed segment a record declares
(HEAD for the offset the archive holds, then PUT of the rest, so a cut resumes), and checks each
receipt: signed by the controller's key (`<state>/identity/controller.pub`) and naming this
very segment (session, recorder, name, hash, size). Only a valid receipt is kept (in
`<session>/receipts.jsonl`); the box then appends an `uploaded` record, and after
`recording.delete_grace` seconds deletes the segment and appends a `deleted` record. A forged,
duplicated or mismatched receipt never deletes anything.

One writer per manifest: while a session is being recorded its manifest belongs to the
recorder, which lends it through `attach(session, writer)` (anything with the recorder's
`append`). Without an attached writer the uploader appends through its own short-lived
`Manifest`, but never for the session the box is in a call for right now: those records wait
(receipts are kept on disk) and are caught up once the session is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import msgspec

from tiepdan.errors import TiepdanError
from tiepdan.firmware import protocol
from tiepdan.firmware.core.backoff import Backoff
from tiepdan.firmware.core.durable import fsync_dir
from tiepdan.firmware.core.mqtt import LinkError, client_context
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.evidence.manifest import (
    FILENAME,
    Manifest,
    ManifestError,
    Record,
    RecordKind,
    Segment,
    parse_line,
)
from tiepdan.firmware.evidence.receipt import (
    Receipt,
    ReceiptError,
    check_receipt,
    controller_key,
    parse_receipt,
)

if TYPE_CHECKING:
    from tiepdan.firmware.agent.agent import Agent
    from tiepdan.firmware.evidence.recipients import Recipients

log = logging.getLogger(__name__)

RECEIPTS = "receipts.jsonl"
BATCH_LINES = 2000
CHUNK = 256 * 1024
RECIPIENTS_EVERY = 3600.0


class ManifestWriter(Protocol):
    """The recorder's side of an open manifest (`SegmentRecorder.append`)."""

    async def append(self, kind: RecordKind, *,
                     detail: dict[str, str | int | bool] | None = None,
                     segment: Segment | None = None) -> Record: ...


class UploadError(TiepdanError):
    """A pass could not finish a step; retried with backoff."""


class Held(msgspec.Struct, frozen=True):
    """A verified receipt as the box keeps it, with when the box verified it."""

    receipt: Receipt
    verified_utc_ms: int


@dataclass
class UploadReport:
    """What one pass did (tests and the bench read it)."""

    records_sent: int = 0
    uploaded: int = 0
    bytes: int = 0
    deleted: int = 0
    pending: int = 0  # segments still without a valid receipt
    errors: list[str] = field(default_factory=list)


class Uploader:
    def __init__(self, agent: Agent, recipients: Recipients) -> None:
        self.agent = agent
        self.recipients = recipients
        self.device = agent.device
        self.config = agent.config.recording
        self.dir = agent.config.recording_dir
        self.state_dir = agent.config.state_dir
        self._writers: dict[str, ManifestWriter] = {}
        self._own: dict[str, Manifest] = {}  # opened by this pass, closed at its end
        self._complete: dict[str, int] = {}  # session -> manifest size when nothing was left
        self._identity = Identity(agent.config.state_dir)
        self._recipients_at = 0.0
        self.last: UploadReport | None = None
        self.failures = 0
        self._backoff = Backoff(1.0, self.config.upload_retry_max)

    # -- the recorder's seam ---------------------------------------------------------------------

    def attach(self, session: str, writer: ManifestWriter) -> None:
        """The recorder owns this session's manifest now: append through it."""
        self._writers[session] = writer

    def detach(self, session: str) -> None:
        self._writers.pop(session, None)

    # -- the loop --------------------------------------------------------------------------------

    @property
    def archive_url(self) -> str:
        """The controller's remote configuration wins over the local (enrollment's) setting."""
        remote = self.agent.shadow.config.archive_url
        return (remote or self.config.archive_url).rstrip("/")

    async def run(self) -> None:
        idle = min(5.0, self.config.upload_retry_max)
        while True:
            if not self.archive_url:
                await asyncio.sleep(idle)
                continue
            await self._refresh_recipients()
            try:
                report = await self.sync()
            except Exception as exc:  # a pass must never kill the agent
                log.exception("upload_pass_failed")
                report = UploadReport(errors=[repr(exc)])
            if report.errors:
                self.failures += 1
                delay = self._backoff.next()
                log.warning("upload_retry failures=%d delay_s=%.1f first_error=%s",
                            self.failures, delay, report.errors[0])
            else:
                self.failures = 0
                self._backoff.reset()
                delay = idle
            await asyncio.sleep(delay)

    async def _refresh_recipients(self) -> None:
        recipients = self.recipients
        fresh = time.monotonic() - self._recipients_at < RECIPIENTS_EVERY
        if fresh and recipients.current() is not None:
            return
        try:
            await recipients.refresh(self.archive_url, self.config.upload_timeout,
                                     await self._tls())
            self._recipients_at = time.monotonic()
        except Exception as exc:
            log.warning("recipients_refresh_failed error=%s", exc)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {"archive_url": self.archive_url or None, "failures": self.failures,
                "pending": None if last is None else last.pending,
                "last_error": None if last is None or not last.errors else last.errors[0]}

    def backlog_seconds(self, now_ms: int | None = None) -> float | None:
        """Age of the oldest segment this box recorded that the archive has not receipted yet
        (0 with none): what `tele/health` reports as `recording_backlog_s`. Reads the files the
        upload pass writes, tolerating a line being written; meant for a worker thread."""
        now_ms = protocol.now_ms() if now_ms is None else now_ms
        oldest: int | None = None
        if not self.dir.is_dir():
            return 0.0
        for directory in self.dir.glob("*/"):
            manifest = directory / FILENAME
            if not manifest.exists() or self._complete.get(directory.name) == \
                    manifest.stat().st_size:
                continue
            try:
                _, records = _read(manifest)
            except OSError:
                continue
            held = _held(directory / RECEIPTS)
            for record in records:
                if record.kind == "segment" and record.segment and \
                        record.segment.name not in held:
                    oldest = record.utc_ms if oldest is None else min(oldest, record.utc_ms)
        return 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)

    async def sync(self) -> UploadReport:
        """One pass over every session directory."""
        report = UploadReport()
        if not self.archive_url:
            return report
        key = controller_key(self.state_dir)
        if key is None:
            report.errors.append("no controller key: the box has not enrolled")
            return report
        try:
            tls = await self._tls()
        except UploadError as exc:
            report.errors.append(str(exc))
            return report
        timeout = aiohttp.ClientTimeout(sock_connect=self.config.upload_timeout,
                                        sock_read=self.config.upload_timeout)
        directories = sorted(p for p in self.dir.glob("*/") if (p / FILENAME).exists()) \
            if self.dir.is_dir() else []
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(
                                             ssl=tls if tls is not None else True)) as http:
            for directory in directories:
                session = directory.name
                size = (directory / FILENAME).stat().st_size
                if self._complete.get(session) == size:
                    continue
                try:
                    done = await _Pass(self, http, key, directory, report).run()
                except (UploadError, ReceiptError, aiohttp.ClientError, TimeoutError,
                        OSError, ManifestError) as exc:
                    log.warning("upload_session_failed session=%s error=%r", session, exc)
                    report.errors.append(f"{session}: {exc!r}")
                    continue
                finally:
                    self._release(session)
                if done:
                    self._complete[session] = (directory / FILENAME).stat().st_size
        self.last = report
        return report

    async def _tls(self) -> ssl.SSLContext | None:
        """The box's client certificate (the MQTT one): the archive's listener requires it.
        Read each pass, so a renewed certificate is used without a restart. None for a plain
        http:// archive URL (a development proxy), which gets no certificate."""
        if not self.archive_url.startswith("https://"):
            return None
        try:
            return await asyncio.to_thread(client_context, self.agent.config.box_tls())
        except LinkError as exc:
            raise UploadError(f"no TLS identity for the archive: {exc}") from None

    async def append(self, session: str, kind: RecordKind,
                     detail: dict[str, str | int | bool]) -> Record | None:
        """Append through the manifest's one writer; None when that must wait."""
        writer = self._writers.get(session)
        if writer is not None:
            return await writer.append(kind, detail=detail)
        if not self.can_append(session):
            return None
        # In the loop thread on purpose, and only between the recorder's uses: the manifest
        # stays open for the rest of this pass (closed by `sync`), never across a call start.
        manifest = self._own.get(session)
        if manifest is None:
            manifest = Manifest(self.dir / session / FILENAME, device=self.device,
                                session=session, key=self._identity.signing_key(),
                                boot_id=self.agent.boot_id, clock_synced=self._clock_synced)
            self._own[session] = manifest
        return manifest.append(kind, detail=detail)

    def _release(self, session: str) -> None:
        manifest = self._own.pop(session, None)
        if manifest is not None:
            manifest.close()

    def can_append(self, session: str) -> bool:
        """False for the session the box is in a call for, unless its recorder lent a writer:
        the recorder may open that manifest any moment, so those records are caught up later.
        """
        if session in self._writers:
            return True
        call = getattr(self.agent, "call", None)
        return call is None or call.session != session

    def _clock_synced(self) -> bool:
        latest = self.agent.telemetry.latest
        return bool(latest is not None and latest.clock_synced)


class _Pass:
    """One session directory, once: records, segments, receipts, bookkeeping, deletion."""

    def __init__(self, uploader: Uploader, http: aiohttp.ClientSession, key: Any,
                 directory: Path, report: UploadReport) -> None:
        self.up = uploader
        self.http = http
        self.key = key
        self.directory = directory
        self.session = directory.name
        self.report = report
        self.base = uploader.archive_url + protocol.archive_recording_path(self.session,
                                                                          uploader.device)

    async def run(self) -> bool:
        """True when nothing is left to do for this session (until its manifest grows)."""
        lines, records = _read(self.directory / FILENAME)
        await self._send_records(lines)
        held = _held(self.directory / RECEIPTS)
        segments = [r.segment for r in records if r.kind == "segment" and r.segment]
        uploaded = {str(r.detail.get("name")) for r in records if r.kind == "uploaded"}
        deleted = {str(r.detail.get("name")) for r in records if r.kind == "deleted"}
        pending = 0
        for segment in segments:
            path = self.directory / segment.name
            if segment.name not in held:
                if not path.exists():
                    log.error("upload_segment_lost session=%s name=%s", self.session,
                              segment.name)
                    continue
                receipt = await self._upload(segment, path)
                held[segment.name] = self._keep(receipt)
            if not await self._bookkeep(segment, held[segment.name], uploaded, deleted):
                pending += 1
        self.report.pending += pending
        lifecycle = [r.kind for r in records if r.kind in ("start", "segment", "stop",
                                                           "recovered")]
        ended = bool(lifecycle) and lifecycle[-1] in ("stop", "recovered")
        if pending == 0 and ended:
            # The records this pass appended go out now, so the archive's copy is whole.
            lines, _ = _read(self.directory / FILENAME)
            await self._send_records(lines)
            return True
        return False

    async def _send_records(self, lines: list[bytes]) -> None:
        async with self.http.get(self.base) as reply:
            body = await _json(reply)
            if reply.status != 200:
                raise UploadError(f"archive answered {reply.status}: {_message(body)}")
            start = int(body["next_seq"])
        if start > len(lines):
            raise UploadError(f"archive holds {start} records, the box only {len(lines)}")
        for first in range(start, len(lines), BATCH_LINES):
            batch = lines[first:first + BATCH_LINES]
            async with self.http.post(self.base + "/records", data=b"\n".join(batch) + b"\n",
                                      headers={"Content-Type": "application/x-ndjson"}) as reply:
                body = await _json(reply)
                if reply.status != 200:
                    log.error("upload_records_refused session=%s status=%d error=%s",
                              self.session, reply.status, _message(body))
                    raise UploadError(f"records refused ({reply.status}): {_message(body)}")
            self.report.records_sent += int(body.get("accepted", 0))

    async def _upload(self, segment: Segment, path: Path) -> Receipt:
        url = f"{self.base}/segments/{segment.name}"
        async with self.http.head(url) as reply:
            if reply.status != 200:
                raise UploadError(f"HEAD {segment.name}: {reply.status} "
                                  f"{reply.headers.get(protocol.ERROR_HEADER, '')}")
            offset = int(reply.headers.get(protocol.UPLOAD_OFFSET_HEADER, "0"))
            stored = reply.headers.get(protocol.SEGMENT_STORED_HEADER) == "yes"
        if stored:
            async with self.http.get(f"{self.base}/receipts",
                                     params={"name": segment.name}) as reply:
                body = await _json(reply)
                found = body.get("receipts") if reply.status == 200 else None
            if not found:
                raise UploadError(f"{segment.name} stored but no receipt given")
            return self._check(msgspec.convert(found[0], Receipt), segment)
        size = segment.ct_size
        if offset > size:
            offset = 0
        self.up.agent.hold("upload")
        try:
            headers = {"Content-Length": str(size - offset),
                       "Content-Type": "application/octet-stream"}
            if size > 0:
                headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
            async with self.http.put(url, data=_file_chunks(path, offset), headers=headers,
                                     params={"offset": str(offset)}) as reply:
                data = await reply.read()
                if reply.status != 200:
                    raise UploadError(f"PUT {segment.name} from {offset}: {reply.status} "
                                      f"{data[:200]!r}")
        finally:
            self.up.agent.release("upload")
        self.report.bytes += size - offset
        self.report.uploaded += 1
        return self._check(parse_receipt(data), segment)

    def _check(self, receipt: Receipt, segment: Segment) -> Receipt:
        try:
            check_receipt(receipt, self.key, session=self.session, recorder=self.up.device,
                          name=segment.name, ct_sha256=segment.ct_sha256,
                          ct_size=segment.ct_size)
        except ReceiptError as exc:
            log.error("upload_receipt_invalid session=%s name=%s error=%s", self.session,
                      segment.name, exc)
            raise
        return receipt

    def _keep(self, receipt: Receipt) -> Held:
        held = Held(receipt, int(time.time() * 1000))
        fd = os.open(self.directory / RECEIPTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, msgspec.json.encode(held) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("upload_receipt session=%s name=%s", self.session, receipt.name)
        return held

    async def _bookkeep(self, segment: Segment, held: Held, uploaded: set[str],
                        deleted: set[str]) -> bool:
        """`uploaded`, then after the grace the deletion and `deleted`; True when all done."""
        name = segment.name
        if name not in uploaded:
            record = await self.up.append(self.session, "uploaded", {
                "name": name, "ct_sha256": segment.ct_sha256, "archive": held.receipt.archive,
                "received_utc_ms": held.receipt.received_utc_ms, "receipt_sig": held.receipt.sig})
            if record is None:
                return False
            uploaded.add(name)
        if name in deleted:
            return True
        age = time.time() - held.verified_utc_ms / 1000
        if age < self.up.config.delete_grace:
            return False
        path = self.directory / name
        if path.exists():
            if not self.up.can_append(self.session):
                return False  # delete and say so together, once the session is over
            path.unlink()
            fsync_dir(self.directory)
        record = await self.up.append(self.session, "deleted", {
            "name": name, "ct_sha256": segment.ct_sha256})
        if record is None:
            return False
        deleted.add(name)
        self.report.deleted += 1
        log.info("upload_segment_deleted session=%s name=%s", self.session, name)
        return True


def _read(path: Path) -> tuple[list[bytes], list[Record]]:
    """Whole lines that parse; a line being written right now is left for the next pass."""
    data = path.read_bytes()
    lines, records = [], []
    for line in data.split(b"\n")[:-1]:
        try:
            records.append(parse_line(line))
        except ManifestError:
            break
        lines.append(line)
    return lines, records


def _held(path: Path) -> dict[str, Held]:
    held: dict[str, Held] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_bytes().splitlines():
            try:
                entry = msgspec.json.decode(line, type=Held)
            except msgspec.DecodeError:
                continue  # a torn last line: that receipt is fetched again
            held.setdefault(entry.receipt.name, entry)
    return held


async def _file_chunks(path: Path, offset: int) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(handle.seek, offset)
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        handle.close()


async def _json(reply: aiohttp.ClientResponse) -> Any:
    data = await reply.read()
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {"error": {"message": data[:200].decode(errors="replace")}}


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{body['error'].get('code', '')}: {body['error'].get('message', '')}"
    return str(body)[:200]
