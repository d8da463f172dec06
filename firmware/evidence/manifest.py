"""The append-only, hash-chained, signed manifest of one recording: what makes it evidence.

age seals each segment (confidential, truncation and reordering detected) but says nothing of
*who* made it or whether a segment went missing; the manifest does. One JSON line per record:
a sealed segment or an event (start, stop, crash recovered, upload acknowledged, deleted, disk
low). Each record carries its sequence number, the SHA-256 of the previous line, the recorder's
id, the session, UTC and monotonic times with the clock-sync state (a Pi has no RTC), and an
Ed25519 signature by the recorder's key over the canonical encoding of everything else.

The same format serves the box (signed with the box's key, `firmware.identity`) and the
controller's bridge recording (signed with the controller's key); the archive and the
archivist's `verify` use `verify_chain` on the lines they hold.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tiepdan.errors import BadInput
from tiepdan.firmware.core.durable import fsync_dir

log = logging.getLogger(__name__)

VERSION = 1
GENESIS = "0" * 64
FILENAME = "manifest.jsonl"

RecordKind = Literal["start", "segment", "stop", "recovered", "uploaded", "deleted", "disk_low"]


class Segment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A sealed segment: the age file `name`, and the hashes that bind its two forms."""

    name: str  # "<index:06d>.<container>.age", unique within the recording
    index: int
    ct_sha256: str  # of the age file as stored and uploaded
    ct_size: int
    pt_sha256: str  # of the plaintext media, checked after decryption
    pt_size: int
    start_utc_ms: int
    duration_ms: int


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    seq: int
    prev: str  # hex SHA-256 of the previous record's line, GENESIS for seq 0
    kind: RecordKind
    device: str  # the recorder: a box id, or "controller-<id>" for the bridge recording
    session: str
    utc_ms: int
    mono_ns: int
    boot_id: str
    clock_synced: bool
    segment: Segment | None = None
    detail: dict[str, str | int | bool] = {}
    sig: str = ""  # base64 Ed25519 over `signed_bytes()`

    def signed_bytes(self) -> bytes:
        """The canonical encoding the signature covers: the record without `sig`, keys sorted."""
        return msgspec.json.encode(msgspec.structs.replace(self, sig=""), order="sorted")

    def line(self) -> bytes:
        """The record as stored: one JSON line without its newline."""
        return msgspec.json.encode(self, order="sorted")

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.line()).hexdigest()


class ManifestError(BadInput):
    """A manifest that cannot be read or extended."""


def parse_line(line: bytes) -> Record:
    try:
        return msgspec.json.decode(line, type=Record)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"not a manifest record: {exc}") from None


def sign(record: Record, key: Ed25519PrivateKey) -> Record:
    signature = key.sign(record.signed_bytes())
    return msgspec.structs.replace(record, sig=base64.b64encode(signature).decode())


def signature_valid(record: Record, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(record.sig, validate=True), record.signed_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Problem:
    """One thing `verify_chain` found wrong; `seq` is the record it concerns (-1: the whole)."""

    seq: int
    code: str  # gap | order | fork | chain | signature | device | session | version | untrusted
    message: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.code}: {self.message}" if self.seq >= 0 else \
            f"{self.code}: {self.message}"


KeyLookup = Callable[[Record], Ed25519PublicKey | None]


def verify_chain(lines: Iterable[bytes], *, device: str, session: str,
                 key_for: KeyLookup) -> tuple[list[Record], list[Problem]]:
    """Check lines as a whole manifest: contiguous, chained, signed, all of one recording.

    `key_for(record)` returns the key that may have signed it at its time, or None when no key
    does (unknown recorder, or a record made after the recorder's revocation). Deleted,
    reordered, edited, replayed and forked records all surface as problems; the records
    returned are those that parsed, in file order.
    """
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    prev = GENESIS
    expected = 0
    for number, raw in enumerate(lines):
        try:
            record = parse_line(raw)
        except ManifestError as exc:
            problems.append(Problem(expected, "parse", f"line {number + 1}: {exc}"))
            continue
        records.append(record)
        if record.seq in seen:
            kind = "replay" if seen[record.seq] == record.hash else "fork"
            problems.append(Problem(record.seq, kind, "sequence number seen before"))
            continue
        seen[record.seq] = record.hash
        if record.v != VERSION:
            problems.append(Problem(record.seq, "version", f"unknown version {record.v}"))
        if record.seq != expected:
            code = "gap" if record.seq > expected else "order"
            problems.append(Problem(record.seq, code, f"expected record {expected}"))
        if record.prev != prev:
            problems.append(Problem(record.seq, "chain",
                                    "previous-record hash does not match the record before"))
        if record.device != device:
            problems.append(Problem(record.seq, "device", f"made by {record.device!r}"))
        if record.session != session:
            problems.append(Problem(record.seq, "session", f"belongs to {record.session!r}"))
        key = key_for(record)
        if key is None:
            problems.append(Problem(record.seq, "untrusted",
                                    f"no trusted key for {record.device!r} at {record.utc_ms}"))
        elif not signature_valid(record, key):
            problems.append(Problem(record.seq, "signature", "signature does not verify"))
        prev = record.hash
        expected = max(expected, record.seq) + 1
    return records, problems


class Manifest:
    """The writer's side: appends signed records durably, recovering a torn tail on open.

    Appends go through `os.write` on an O_APPEND descriptor followed by `fsync`, so a record is
    either wholly on disk or detected as torn next time. ENOSPC and other OS errors surface as
    OSError; the caller decides (the recorder stops cleanly and raises an alarm).
    """

    def __init__(self, path: Path, *, device: str, session: str, key: Ed25519PrivateKey,
                 boot_id: str, clock_synced: Callable[[], bool]) -> None:
        self.path = path
        self.device = device
        self.session = session
        self._key = key
        self._boot_id = boot_id
        self._clock_synced = clock_synced
        self.records: list[Record] = []
        self.torn_bytes = 0
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        good = 0
        for line in data.split(b"\n")[:-1] if data else []:
            try:
                self.records.append(parse_line(line))
            except ManifestError:
                break
            good += len(line) + 1
        if good < len(data):
            self.torn_bytes = len(data) - good
            log.warning("manifest_torn_tail path=%s torn_bytes=%d records=%d", self.path,
                        self.torn_bytes, len(self.records))
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if not data:
            fsync_dir(self.path.parent)

    @property
    def last(self) -> Record | None:
        return self.records[-1] if self.records else None

    def append(self, kind: RecordKind, *, segment: Segment | None = None,
               detail: dict[str, str | int | bool] | None = None) -> Record:
        last = self.last
        record = sign(Record(
            v=VERSION, seq=0 if last is None else last.seq + 1,
            prev=GENESIS if last is None else last.hash, kind=kind, device=self.device,
            session=self.session, utc_ms=int(time.time() * 1000), mono_ns=time.monotonic_ns(),
            boot_id=self._boot_id, clock_synced=self._clock_synced(), segment=segment,
            detail=detail or {}), self._key)
        data = record.line() + b"\n"
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write to manifest")  # a full disk does this
            os.fsync(self._fd)
        except OSError:
            # Leave no torn line for the next append to glue onto.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise
        self.records.append(record)
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
