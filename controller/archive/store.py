"""The central recording archive: verified manifests, hash-addressed segments, signed receipts.

Boxes (and the bridge's own recorder) send manifest records and sealed segments; the archive
keeps only what it can attribute and check. Records are taken strictly in sequence order, each
chained to the one before and signed by a key trusted at the record's time (the box's key from
`controller.identities`, or the controller's own key for `controller-<id>`); a repeat of an
accepted record is fine, a different record under a seen sequence number is a fork and is
refused (and kept aside as evidence). A segment is taken only when a `segment` record declared
it, never beyond the declared size, re-hashed on completion, stored with fsync + rename, and
acknowledged with a receipt the controller signs; partial uploads rest as `<name>.part` so an
upload resumes where a cut left it.

Trust rests on what the controller itself saw, not only on the times a box signs (a stolen key
can backdate): at revocation each of the box's recordings is frozen where the archive's copy
ends (`freeze`), and nothing after that is taken; every record's receipt time (server clock) is
kept and must be before a revocation as well as its own `utc_ms`. A closed session takes only
the bookkeeping records (`uploaded`, `deleted`) of segments it already holds, and a `segment`
or `stop` needs a `start` that no `stop` has ended yet.

A session closes only when every recording in it is complete: a `stop` (or, after a crash, a
`recovered`) record ends it, and every declared segment is stored, re-verified and receipted.
The signed closed-session document commits to each manifest's prefix (record count and last
hash) and to every segment hash.

Layout under `[archive] dir`: `recordings/<session>/<recorder>/{manifest.jsonl,receipts.jsonl,
forks.jsonl,<segment>}`, `closed/<session>.json`, the index `archive.db` (SQLite).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.controller.archive.closed import (
    ClosedRecording,
    ClosedSegment,
    ClosedSession,
    Problems,
)
from tiepdan.controller.archive.upload import Upload, append_durably, sha256_of
from tiepdan.controller.config import ArchiveSection
from tiepdan.controller.connection import Connection, SqliteConnection, connect
from tiepdan.controller.identities import Identities
from tiepdan.controller.migrations import archive_db, migrate
from tiepdan.controller.migrations.archive_db import ARCHIVE_SCHEMA
from tiepdan.controller.store import private_file
from tiepdan.errors import (
    BadInput,
    Conflict,
    Corrupt,
    Forbidden,
    NotFound,
    OutOfRange,
    TiepdanError,
    TooLarge,
)
from tiepdan.firmware import protocol
from tiepdan.firmware.core.config import ConfigError
from tiepdan.firmware.core.durable import fsync_dir, write_atomic
from tiepdan.firmware.evidence.identity import write_private
from tiepdan.firmware.evidence.manifest import (
    FILENAME,
    GENESIS,
    VERSION,
    ManifestError,
    Record,
    parse_line,
    signature_valid,
    verify_chain,
)
from tiepdan.firmware.evidence.receipt import Receipt, Signer, parse_receipt, sign_receipt
from tiepdan.firmware.evidence.recipients import sign_document

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CHUNK = 1024 * 1024
RECEIPTS = "receipts.jsonl"
FORKS = "forks.jsonl"
SEGMENT_NAME = re.compile(r"^[0-9]{6}\.[a-z0-9]{1,8}\.age\Z")
LIFECYCLE = ("start", "segment", "stop", "recovered")
ENDS = ("stop", "recovered")
BOOKKEEPING = ("uploaded", "deleted")

# The index's tables: controller/migrations/archive_db.py.



@dataclass
class _State:
    """What the server knows about a recording while a batch of its records comes in."""

    open: bool  # the last lifecycle record is a start or a segment
    closed: bool  # the session's closed document is signed
    frozen_at: int | None  # revoked: no record from this sequence number on
    received_utc_ms: int  # the server's clock when the batch arrived


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    next_seq: int


@dataclass(frozen=True)
class SegmentState:
    offset: int  # bytes held (the declared size once stored)
    ct_size: int
    stored: bool
    receipt: Receipt | None


# Returns the devices that are points of a session, or None for an unknown session.
SessionPoints = Callable[[str], list[str] | None]


class Archive:
    def __init__(self, config: ArchiveSection, data_dir: Path, identities: Identities,
                 signing: Signer, public_raw: bytes, controller_id: str,
                 session_points: SessionPoints | None = None, index: str = "") -> None:
        """`index`: a `postgresql://` URL for the index (`database.url`); empty: `archive.db`
        (SQLite) in the archive folder."""
        self.config = config
        self.dir = Path(config.dir) if config.dir else data_dir / "archive"
        self.recordings_dir = self.dir / "recordings"
        self.closed_dir = self.dir / "closed"
        self.identity_file = self.dir / "identity.txt"
        self.controller_id = controller_id
        self.recorder_id = f"controller-{controller_id}"
        self.max_segment = config.max_segment_mb * MIB
        self._identities = identities
        self._signing = signing
        self._controller_key = Ed25519PublicKey.from_public_bytes(public_raw)
        self._session_points = session_points
        self._lock = threading.RLock()
        self._uploading: set[tuple[str, str, str]] = set()
        for path in (self.recordings_dir, self.closed_dir):
            path.mkdir(parents=True, exist_ok=True)
        if index:  # PostgreSQL: the archive's tables in their own schema of that database
            self._db: Connection = connect(index, schema=ARCHIVE_SCHEMA)
            migrate(self._db, archive_db.MIGRATIONS, label="archive")
        else:  # synchronous=FULL: a receipt's row is on disk before the receipt leaves
            self._db = SqliteConnection.open(private_file(self.dir / "archive.db"),
                                             synchronous="FULL", foreign_keys=False)
            migrate(self._db, archive_db.MIGRATIONS, label="archive",
                    path=self.dir / "archive.db")
        self.recipients = self._recipients()
        self.recipients_document = sign_document(self.recipients, signing)
        self._reconcile()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- recipients ------------------------------------------------------------------------------

    def _recipients(self) -> list[str]:
        recipients = list(self.config.recipients)
        if not recipients:
            if not self.config.trial_identity:
                # Security by default: whoever holds the controller must not read recordings.
                raise ConfigError(
                    "no [archive] recipients: generate the archive's age identity on the "
                    "archivist's offline machine (age-keygen) and set archive.recipients to its "
                    "public key; only for a trial, archive.trial_identity = true keeps one on "
                    "this controller")
            if not self.identity_file.exists():
                identity = pyrage.x25519.Identity.generate()
                write_private(self.identity_file, f"# public key: {identity.to_public()}\n"
                                                  f"{identity}\n".encode())
                log.warning("archive_identity_created path=%s: recordings are sealed to an "
                            "identity kept on this controller; in production generate it "
                            "offline (age-keygen) and set [archive] recipients",
                            self.identity_file)
            else:
                log.warning("archive_identity_online path=%s: production keeps the archive "
                            "identity offline; set [archive] recipients", self.identity_file)
            secret = [line for line in self.identity_file.read_text().splitlines()
                      if line.startswith("AGE-SECRET-KEY-")]
            if not secret:
                raise ValueError(f"{self.identity_file} holds no age identity")
            identity = pyrage.x25519.Identity.from_str(secret[-1])
            recipients = [str(identity.to_public())]
        if self.config.escrow_recipient:
            recipients.append(self.config.escrow_recipient)
        return recipients

    # -- keys ------------------------------------------------------------------------------------

    def key_for(self, record: Record, received_utc_ms: int | None = None
                ) -> Ed25519PublicKey | None:
        """The key that may have signed `record`, or None (unknown or revoked): the box must
        have been trusted both at the record's own time and when the archive received it
        (now while ingesting; the stored receipt time when re-verifying)."""
        if record.device == self.recorder_id:
            return self._controller_key
        identity = self._identities.get(record.device)
        if identity is None or not identity.trusted_at(record.utc_ms / 1000):
            return None
        if received_utc_ms is None:
            with self._lock:
                row = self._db.execute(
                    "SELECT received_utc_ms FROM records WHERE session = ? AND recorder = ? "
                    "AND seq = ? AND hash = ?",
                    (record.session, record.device, record.seq, record.hash)).fetchone()
            received_utc_ms = row[0] if row is not None else None
        if received_utc_ms is not None and not identity.trusted_at(received_utc_ms / 1000):
            return None
        return Ed25519PublicKey.from_public_bytes(identity.sign_key)

    def stored_by_recorder(self) -> dict[str, tuple[int, int]]:
        """{recorder: (segments, ciphertext bytes)} archived so far; the archive never deletes,
        so these only grow (metrics expose them as counters)."""
        with self._lock:
            rows = self._db.execute("SELECT recorder, count(*), coalesce(sum(ct_size), 0) "
                                    "FROM segments GROUP BY recorder").fetchall()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def closed_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM closed").fetchone()[0])

    def freeze(self, recorder: str, reason: str) -> dict[str, int]:
        """At revocation: end each of `recorder`'s recordings where the archive's copy ends.

        Returns {session: next_seq} of what was frozen. Records from then on are refused
        whatever time they claim (a stolen key can backdate; the archive's copy cannot grow).
        """
        with self._lock:
            self._db.execute(
                "INSERT INTO frozen (session, recorder, next_seq, frozen_utc_ms, "
                "reason) SELECT session, recorder, next_seq, ?, ? FROM recordings "
                "WHERE recorder = ? ON CONFLICT DO NOTHING", (_now_ms(), reason, recorder))
            rows = self._db.execute("SELECT session, next_seq FROM frozen WHERE recorder = ?",
                                    (recorder,)).fetchall()
        frozen = {str(r[0]): int(r[1]) for r in rows}
        log.warning("archive_frozen recorder=%s recordings=%d reason=%s", recorder,
                    len(frozen), reason)
        return frozen

    def _frozen_at(self, session: str, recorder: str) -> int | None:
        """Where a recording was frozen; 0 for a revoked box's recording the archive lacked."""
        row = self._db.execute("SELECT next_seq FROM frozen WHERE session = ? AND recorder = ?",
                               (session, recorder)).fetchone()
        if row is not None:
            return int(row[0])
        if recorder != self.recorder_id:
            identity = self._identities.get(recorder)
            if identity is not None and identity.revoked_at is not None:
                return 0
        return None

    # -- records ---------------------------------------------------------------------------------

    def recording_dir(self, session: str, recorder: str) -> Path:
        return self.recordings_dir / session / recorder

    def check_recording(self, session: str, recorder: str) -> None:
        if not protocol.is_device_id(session) or not protocol.is_device_id(recorder):
            raise BadInput(code="bad_request", message="session and recorder must be ids of "
                                                   "a-z, 0-9 and '-'")
        if self._session_points is None:
            return
        points = self._session_points(session)
        if points is None:
            raise NotFound(code="unknown_session", message=f"no session {session!r}")
        if recorder != self.recorder_id and recorder not in points:
            raise Forbidden(code="not_a_point", message=f"{recorder} is not a point of {session}")

    def next_seq(self, session: str, recorder: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT next_seq FROM recordings WHERE session = ? AND recorder = ?",
                (session, recorder)).fetchone()
        return 0 if row is None else int(row[0])

    def ingest_records(self, session: str, recorder: str,
                       lines: Iterable[bytes]) -> IngestResult:
        """Accept records in sequence order; the valid prefix of a batch is kept on refusal."""
        self.check_recording(session, recorder)
        with self._lock:
            row = self._db.execute(
                "SELECT next_seq, last_hash FROM recordings WHERE session = ? AND recorder = ?",
                (session, recorder)).fetchone()
            next_seq, last = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
            names = {r[0] for r in self._db.execute(
                "SELECT name FROM segments WHERE session = ? AND recorder = ?",
                (session, recorder))}
            state = _State(
                open=self._is_open(session, recorder),
                closed=self._db.execute("SELECT 1 FROM closed WHERE session = ?",
                                        (session,)).fetchone() is not None,
                frozen_at=self._frozen_at(session, recorder), received_utc_ms=_now_ms())
            fresh: list[Record] = []
            duplicates = 0
            try:
                for number, line in enumerate(lines):
                    raw = line.strip()
                    if not raw:
                        continue
                    record = self._check_record(session, recorder, number, raw, next_seq,
                                                last, names, state)
                    if record is None:
                        duplicates += 1
                        continue
                    fresh.append(record)
                    next_seq, last = record.seq + 1, record.hash
                    if record.segment is not None:
                        names.add(record.segment.name)
                    if record.kind == "start":
                        state.open = True
                    elif record.kind in ENDS:
                        state.open = False
            except TiepdanError as exc:
                self._store_records(session, recorder, fresh, state.received_utc_ms)
                exc.extra.update(accepted=len(fresh), next_seq=next_seq)
                log.warning("archive_records_refused session=%s recorder=%s code=%s "
                            "accepted=%d error=%s", session, recorder, exc.code, len(fresh), exc)
                raise
            self._store_records(session, recorder, fresh, state.received_utc_ms)
        if fresh:
            log.info("archive_records session=%s recorder=%s accepted=%d duplicates=%d "
                     "next_seq=%d", session, recorder, len(fresh), duplicates, next_seq)
        return IngestResult(len(fresh), duplicates, next_seq)

    def _is_open(self, session: str, recorder: str) -> bool:
        """Whether the recording's last lifecycle record is a `start` or a `segment`."""
        row = self._db.execute(
            "SELECT kind FROM records WHERE session = ? AND recorder = ? AND kind IN "
            "('start', 'segment', 'stop', 'recovered') ORDER BY seq DESC LIMIT 1",
            (session, recorder)).fetchone()
        return row is not None and row[0] in ("start", "segment")

    def _check_record(self, session: str, recorder: str, number: int, raw: bytes,
                      next_seq: int, last: str, names: set[str],
                      state: _State) -> Record | None:
        """The record if it is the next one, None for a repeat; a TiepdanError otherwise."""
        try:
            record = parse_line(raw)
        except ManifestError as exc:
            raise BadInput(code="bad_record", message=f"line {number + 1}: {exc}") from None
        if record.session != session or record.device != recorder:
            raise BadInput(code="wrong_recording",
                           message=f"record of {record.device}/{record.session} sent to "
                               f"{recorder}/{session}")
        if record.seq < next_seq:
            stored = self._db.execute(
                "SELECT hash FROM records WHERE session = ? AND recorder = ? AND seq = ?",
                (session, recorder, record.seq)).fetchone()
            if stored is not None and stored[0] == record.hash:
                return None
            self._keep_fork(session, recorder, record)
            raise Conflict(code="fork", message=f"record {record.seq} differs from the one "
                                            "already archived under that number")
        if record.seq > next_seq:
            raise Conflict(code="gap", message=f"record {record.seq} sent; expected {next_seq}")
        if state.frozen_at is not None and record.seq >= state.frozen_at:
            raise Forbidden(code="frozen", message=f"{recorder} was revoked: its recording of "
                                              f"{session} ends at record {state.frozen_at}")
        if state.closed and record.kind not in BOOKKEEPING:
            raise Conflict(code="session_closed", message=f"session {session} is closed; only "
                                                      "upload bookkeeping is taken")
        if record.kind in BOOKKEEPING and str(record.detail.get("name")) not in names:
            raise BadInput(code="bad_record", message=f"record {record.seq}: {record.kind} of a "
                                                  "segment no record declared")
        if record.kind in ("segment", "stop") and not state.open:
            raise Conflict(code="not_recording", message=f"record {record.seq}: {record.kind} "
                                                     "without a start that is not ended")
        if record.v != VERSION:
            raise BadInput(code="version", message=f"unknown record version {record.v}")
        if record.prev != last:
            raise Conflict(code="chain", message=f"record {record.seq} does not chain to the "
                                             "archived record before it")
        key = self.key_for(record, state.received_utc_ms)
        if key is None:
            raise Forbidden(code="untrusted", message=f"no trusted key for {recorder} at "
                                                 f"utc_ms {record.utc_ms} (unknown or revoked)")
        if not signature_valid(record, key):
            raise Forbidden(code="signature", message=f"record {record.seq}: signature does not "
                                                 "verify")
        segment = record.segment
        if record.kind == "segment":
            if segment is None:
                raise BadInput(code="bad_record", message=f"record {record.seq}: segment record "
                                                      "without a segment")
            if not SEGMENT_NAME.fullmatch(segment.name):
                raise BadInput(code="bad_record", message=f"segment name {segment.name!r} is not "
                                                      "<index:06d>.<ext>.age")
            if segment.name in names:
                raise Conflict(code="duplicate_segment", message=f"segment {segment.name} was "
                                                             "declared before")
            if segment.ct_size < 0 or not re.fullmatch(r"[0-9a-f]{64}", segment.ct_sha256):
                raise BadInput(code="bad_record", message=f"segment {segment.name}: bad size or "
                                                      "hash")
        return record

    def _keep_fork(self, session: str, recorder: str, record: Record) -> None:
        log.error("archive_fork session=%s recorder=%s seq=%d hash=%s", session, recorder,
                  record.seq, record.hash)
        directory = self.recording_dir(session, recorder)
        if directory.is_dir():
            append_durably(directory / FORKS, record.line() + b"\n")

    def _store_records(self, session: str, recorder: str, records: list[Record],
                       received_utc_ms: int | None = None) -> None:
        if not records:
            return
        directory = self.recording_dir(session, recorder)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(directory.parent)
            fsync_dir(directory.parent.parent)
        size = append_durably(directory / FILENAME, b"".join(r.line() + b"\n" for r in records))
        self._index(session, recorder, records, size, received_utc_ms)

    def _index(self, session: str, recorder: str, records: list[Record], size: int,
               received_utc_ms: int | None = None) -> None:
        last = records[-1]
        kinds = [r.kind for r in records if r.kind in LIFECYCLE]
        with self._db.transaction():
            self._db.executemany(
                "INSERT INTO records (session, recorder, seq, hash, kind, utc_ms, "
                "received_utc_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(session, recorder, r.seq, r.hash, r.kind, r.utc_ms, received_utc_ms)
                 for r in records])
            self._db.executemany(
                "INSERT INTO segments (session, recorder, name, idx, ct_sha256, "
                "ct_size, pt_sha256, record_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(session, recorder, r.segment.name, r.segment.index, r.segment.ct_sha256,
                  r.segment.ct_size, r.segment.pt_sha256, r.seq) for r in records
                 if r.kind == "segment" and r.segment is not None])
            self._db.execute(
                "INSERT INTO recordings (session, recorder, next_seq, last_hash, manifest_bytes, "
                "last_kind, updated_utc_ms) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (session, recorder) DO UPDATE SET next_seq = excluded.next_seq, "
                "last_hash = excluded.last_hash, manifest_bytes = excluded.manifest_bytes, "
                "last_kind = CASE WHEN excluded.last_kind = '' THEN recordings.last_kind "
                "ELSE excluded.last_kind END, updated_utc_ms = excluded.updated_utc_ms",
                (session, recorder, last.seq + 1, last.hash, size, kinds[-1] if kinds else "",
                 _now_ms()))

    def _reconcile(self) -> None:
        """Index manifest lines a crash left on disk between the append and the index."""
        for manifest in sorted(self.recordings_dir.glob(f"*/*/{FILENAME}")):
            session, recorder = manifest.parent.parent.name, manifest.parent.name
            row = self._db.execute(
                "SELECT manifest_bytes FROM recordings WHERE session = ? AND recorder = ?",
                (session, recorder)).fetchone()
            indexed = 0 if row is None else int(row[0])
            data = manifest.read_bytes()
            if len(data) == indexed:
                continue
            whole = data.rfind(b"\n") + 1
            if whole < len(data):
                log.warning("archive_torn_manifest path=%s bytes=%d", manifest,
                            len(data) - whole)
                with open(manifest, "r+b") as handle:
                    handle.truncate(whole)
                    os.fsync(handle.fileno())
            if whole <= indexed:
                continue
            records = [parse_line(line) for line in data[indexed:whole].splitlines()]
            log.warning("archive_reindexed session=%s recorder=%s records=%d", session,
                        recorder, len(records))
            self._index(session, recorder, records, whole)

    # -- segments --------------------------------------------------------------------------------

    def _segment_row(self, session: str, recorder: str, name: str) -> Any:
        self.check_recording(session, recorder)
        if not SEGMENT_NAME.fullmatch(name):
            raise BadInput(code="bad_request", message=f"{name!r} is not a segment name")
        row = self._db.execute(
            "SELECT * FROM segments WHERE session = ? AND recorder = ? AND name = ?",
            (session, recorder, name)).fetchone()
        if row is None:
            raise NotFound(code="unknown_segment",
                           message=f"no segment record declares {name} in {session}/{recorder}; "
                               "send the manifest records first")
        return row

    def segment_state(self, session: str, recorder: str, name: str) -> SegmentState:
        with self._lock:
            row = self._segment_row(session, recorder, name)
            receipt = self._recover(row)
            if receipt is not None:
                return SegmentState(row["ct_size"], row["ct_size"], True, receipt)
            part = self._part(session, recorder, name)
            offset = part.stat().st_size if part.exists() else 0
            return SegmentState(offset, row["ct_size"], False, None)

    def _part(self, session: str, recorder: str, name: str) -> Path:
        return self.recording_dir(session, recorder) / f"{name}.part"

    def _recover(self, row: Any) -> Receipt | None:
        """The receipt of a stored segment, finishing one a crash left renamed but unindexed."""
        if row["receipt"]:
            return parse_receipt(row["receipt"])
        final = self.recording_dir(row["session"], row["recorder"]) / row["name"]
        if not final.exists():
            return None
        if sha256_of(final) != row["ct_sha256"]:
            log.error("archive_stored_segment_bad path=%s", final)
            final.rename(final.with_name(final.name + ".bad"))
            return None
        return self._acknowledge(row)

    def open_upload(self, session: str, recorder: str, name: str, offset: int,
                    length: int | None = None) -> Upload | Receipt:
        """Start (or resume at `offset`) an upload; an already stored segment gives its receipt.

        `offset` may be at most what the archive holds (a shorter one re-sends bytes, which
        are then overwritten); `length` (Content-Length) lets an oversize body be refused
        before a byte of it is read.
        """
        with self._lock:
            row = self._segment_row(session, recorder, name)
            receipt = self._recover(row)
            if receipt is not None:
                return receipt
            ct_size = int(row["ct_size"])
            if ct_size > self.max_segment:
                raise TooLarge(code="too_large", message=f"segment {name} declares {ct_size} "
                                                     f"bytes; the archive takes at most "
                                                     f"{self.config.max_segment_mb} MiB")
            key = (session, recorder, name)
            part = self._part(session, recorder, name)
            held = part.stat().st_size if part.exists() else 0
            if offset < 0 or offset > held:
                raise OutOfRange(code="bad_offset", message=f"offset {offset}; the archive holds "
                                                      f"{held} bytes of {name}", offset=held)
            if length is not None and offset + length > ct_size:
                raise TooLarge(code="larger_than_declared",
                               message=f"{offset} + {length} bytes exceed the declared size "
                                   f"{ct_size} of {name}")
            if key in self._uploading:
                raise Conflict(code="busy", message=f"{name} is being uploaded already",
                                   offset=held)
            self._uploading.add(key)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            # Never truncated here: an empty or short PUT must not throw away what arrived
            # (bytes re-sent from an earlier offset overwrite; the hash decides at the end).
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o640)
        except OSError:
            with self._lock:
                self._uploading.discard(key)
            raise
        return Upload(self, row, part, fd, offset)

    def _finished(self, upload: Upload) -> Receipt:
        row = upload.row
        final = self.recording_dir(row["session"], row["recorder"]) / row["name"]
        digest = sha256_of(upload.path)
        if digest != row["ct_sha256"]:
            upload.path.unlink(missing_ok=True)
            log.warning("archive_segment_hash_mismatch session=%s recorder=%s name=%s",
                        row["session"], row["recorder"], row["name"])
            raise Corrupt(code="hash_mismatch", message=f"{row['name']}: the bytes received do "
                                                     "not hash to the declared ct_sha256")
        os.rename(upload.path, final)
        fsync_dir(final.parent)
        with self._lock:
            receipt = self._acknowledge(row)
        log.info("archive_segment_stored session=%s recorder=%s name=%s bytes=%d",
                 row["session"], row["recorder"], row["name"], row["ct_size"])
        return receipt

    def _acknowledge(self, row: Any) -> Receipt:
        directory = self.recording_dir(row["session"], row["recorder"])
        receipt = self._receipt_on_file(directory, row["name"], row["ct_sha256"])
        if receipt is None:
            receipt = sign_receipt(Receipt(
                v=1, archive=self.controller_id, recorder=row["recorder"],
                session=row["session"], name=row["name"], index=row["idx"],
                ct_sha256=row["ct_sha256"], ct_size=row["ct_size"],
                record_seq=row["record_seq"], received_utc_ms=_now_ms()), self._signing)
            append_durably(directory / RECEIPTS, receipt.line() + b"\n")
        self._db.execute(
            "UPDATE segments SET receipt = ? WHERE session = ? AND recorder = ? AND name = ?",
            (receipt.line().decode(), row["session"], row["recorder"], row["name"]))
        return receipt

    @staticmethod
    def _receipt_on_file(directory: Path, name: str, ct_sha256: str) -> Receipt | None:
        try:
            lines = (directory / RECEIPTS).read_bytes().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            try:
                receipt = parse_receipt(line)
            except ValueError:
                continue
            if receipt.name == name and receipt.ct_sha256 == ct_sha256:
                return receipt
        return None

    def _upload_done(self, upload: Upload) -> None:
        with self._lock:
            row = upload.row
            self._uploading.discard((row["session"], row["recorder"], row["name"]))

    def ingest_file(self, session: str, recorder: str, name: str, path: Path) -> Receipt:
        """Take a segment from a local file (the bridge's recorder): the same checks as HTTP."""
        upload = self.open_upload(session, recorder, name, 0)
        if isinstance(upload, Receipt):
            return upload
        try:
            with open(path, "rb") as source:
                while chunk := source.read(CHUNK):
                    upload.write(chunk)
            receipt = upload.finish()
        finally:
            upload.close()
        if receipt is None:
            raise BadInput(code="short", message=f"{path} is shorter than its declared size")
        return receipt

    def receipts(self, session: str, recorder: str, name: str | None = None) -> list[Receipt]:
        self.check_recording(session, recorder)
        query = ("SELECT receipt FROM segments WHERE session = ? AND recorder = ? "
                 "AND receipt IS NOT NULL")
        params: tuple[str, ...] = (session, recorder)
        if name is not None:
            query, params = query + " AND name = ?", (*params, name)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY idx", params).fetchall()
        return [parse_receipt(r[0]) for r in rows]

    # -- closing ---------------------------------------------------------------------------------

    def closed(self, session_id: str) -> ClosedSession | None:
        with self._lock:
            row = self._db.execute("SELECT document FROM closed WHERE session = ?",
                                   (session_id,)).fetchone()
        return None if row is None else msgspec.json.decode(row[0], type=ClosedSession)

    def try_close(self, session_id: str, devices: Iterable[str],
                  closed_by: str) -> ClosedSession | Problems:
        """Close the session if every recording in it is complete; otherwise say what lacks.

        `devices` are the points expected to have recorded (those that joined); any other
        recorder that sent records must be complete too, and so must the bridge recording when
        `[archive] record_bridge` is on and anybody joined. Blocking (re-hashes every
        segment): call it in a thread.
        """
        done = self.closed(session_id)
        if done is not None:
            return done
        points = sorted(set(devices))
        with self._lock:
            present = {r[0] for r in self._db.execute(
                "SELECT recorder FROM recordings WHERE session = ?", (session_id,))}
        recorders = set(points) | present
        if self.config.record_bridge and points:
            recorders.add(self.recorder_id)
        problems = Problems(session_id)
        recordings = [self._closing(session_id, r, problems) for r in sorted(recorders)]
        if problems.items:
            log.info("archive_close_pending session=%s problems=%d first=%s", session_id,
                     len(problems.items), problems.items[0])
            return problems
        document = ClosedSession(
            v=1, archive=self.controller_id, session=session_id, closed_utc_ms=_now_ms(),
            closed_by=closed_by, points=points,
            recordings=[r for r in recordings if r is not None])
        document = msgspec.structs.replace(document, sig=base64.b64encode(
            self._signing.sign(document.signed_bytes())).decode())
        data = msgspec.json.encode(document, order="sorted")
        write_atomic(self.closed_dir / f"{session_id}.json", data + b"\n")
        with self._lock:
            self._db.execute(
                "INSERT INTO closed (session, closed_utc_ms, closed_by, document) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (session_id, document.closed_utc_ms, closed_by, data))
        log.info("archive_session_closed session=%s by=%s recordings=%d segments=%d",
                 session_id, closed_by, len(document.recordings),
                 sum(len(r.segments) for r in document.recordings))
        return document

    def _closing(self, session: str, recorder: str,
                 problems: Problems) -> ClosedRecording | None:
        """Cheap index checks first; the chain and the re-hash only once nothing is missing."""
        with self._lock:
            state = self._db.execute(
                "SELECT last_kind FROM recordings WHERE session = ? AND recorder = ?",
                (session, recorder)).fetchone()
            rows = self._db.execute(
                "SELECT * FROM segments WHERE session = ? AND recorder = ? ORDER BY idx",
                (session, recorder)).fetchall()
        if state is None:
            problems.items.append(f"{recorder}: no recording received")
            return None
        found = len(problems.items)
        if state["last_kind"] not in ENDS:
            problems.items.append(f"{recorder}: recording not ended yet (last record: "
                                  f"{state['last_kind'] or 'none'})")
        missing = [r["name"] for r in rows if not r["receipt"]]
        if missing:
            problems.items.append(f"{recorder}: {len(missing)} of {len(rows)} segments not "
                                  f"archived yet: {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''}")
        if len(problems.items) > found:
            return None
        lines = (self.recording_dir(session, recorder) / FILENAME).read_bytes().splitlines()
        records, chain = verify_chain(lines, device=recorder, session=session,
                                      key_for=self.key_for)
        problems.items.extend(f"{recorder}: {p}" for p in chain)
        for row in rows:
            path = self.recording_dir(session, recorder) / row["name"]
            if not path.exists() or sha256_of(path) != row["ct_sha256"]:
                log.error("archive_segment_corrupt session=%s recorder=%s name=%s", session,
                          recorder, row["name"])
                problems.items.append(f"{recorder}: stored segment {row['name']} is missing "
                                      "or no longer matches its hash")
        if len(problems.items) > found or not records:
            return None
        return ClosedRecording(
            recorder=recorder, records=len(records), last_hash=records[-1].hash,
            end=state["last_kind"],
            segments=[ClosedSegment(r["name"], r["idx"], r["ct_sha256"], r["ct_size"],
                                        r["pt_sha256"])
                      for r in rows])

    # -- listing (admin API, archivist) ----------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT r.session, COUNT(DISTINCT r.recorder) AS recorders, "
                "MAX(r.updated_utc_ms) AS updated_utc_ms, c.closed_utc_ms, c.closed_by "
                "FROM recordings r LEFT JOIN closed c ON c.session = r.session "
                "GROUP BY r.session ORDER BY updated_utc_ms DESC").fetchall()
            out = []
            for row in rows:
                seg = self._db.execute(
                    "SELECT COUNT(*), COUNT(receipt), COALESCE(SUM(ct_size), 0) FROM segments "
                    "WHERE session = ?", (row["session"],)).fetchone()
                out.append({**dict(row), "segments": seg[0], "stored": seg[1],
                            "bytes": int(seg[2])})  # PostgreSQL's SUM is NUMERIC
        return out

    def recordings(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM recordings WHERE session = ? ORDER BY recorder",
                (session,)).fetchall()
            out = []
            for row in rows:
                seg = self._db.execute(
                    "SELECT COUNT(*), COUNT(receipt), COALESCE(SUM(ct_size), 0) FROM segments "
                    "WHERE session = ? AND recorder = ?",
                    (session, row["recorder"])).fetchone()
                out.append({"recorder": row["recorder"], "records": row["next_seq"],
                            "last_kind": row["last_kind"], "segments": seg[0],
                            "stored": seg[1], "bytes": int(seg[2]),
                            "dir": str(self.recording_dir(session, row["recorder"]))})
        return out


def _now_ms() -> int:
    return int(time.time() * 1000)
