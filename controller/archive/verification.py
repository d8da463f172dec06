"""Is an archived recording whole and genuine? The archivist's check, independent of the archive.

It re-derives everything from the files an archive holds (`recordings/<session>/<recorder>/`:
`manifest.jsonl`, the age segments, `receipts.jsonl`; `closed/<session>.json`) and the trust
roots: each box's enrolled Ed25519 key (the controller DB's `device_identities`, revocation
included) and the controller's own key, which signs receipts, the closed-session document and
the bridge recording (`controller-<id>`). Nothing here trusts the archive's own index: a copy of
the directory and the keys is enough to verify it years later.

Every finding is a line in a `VerificationReport`: one item per concern (manifest, each segment,
receipts, stray files, closed document), each ok or with its problems, so the archivist sees which
segment is missing or tampered, not just "failed".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.table import Table
from rich.text import Text

from tiepdan.controller.connection import driver_errors, is_postgresql, redacted
from tiepdan.controller.identities import DeviceIdentity
from tiepdan.controller.store import open_readonly
from tiepdan.errors import Corrupt, TiepdanError
from tiepdan.firmware.evidence.manifest import FILENAME, KeyLookup, Record, verify_chain
from tiepdan.firmware.protocol import is_device_id

log = logging.getLogger(__name__)

RECEIPTS = "receipts.jsonl"
FORKS = "forks.jsonl"  # records the archive refused as forks, kept as evidence
SEGMENT_SUFFIX = ".age"
# Manifest problems that make a record's own content untrustworthy (a broken link to a missing
# neighbour does not: that is reported on the manifest item).
_RECORD_FATAL = {"parse", "signature", "untrusted", "device", "session", "version", "fork",
                 "replay"}


class VerificationError(TiepdanError):
    """The input cannot be verified at all (no such session, unreadable trust root)."""


@dataclass
class Item:
    """One thing checked: `kind` is manifest | segment | receipts | files | closed."""

    kind: str
    name: str
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "ok": self.ok, "problems": self.problems,
                "note": self.note}


@dataclass
class VerificationReport:
    """The verdict on one recording (one recorder in one session)."""

    session: str
    recorder: str
    items: list[Item] = field(default_factory=list)
    segments: list[Record] = field(default_factory=list)  # segment records, manifest order
    records: list[Record] = field(default_factory=list)  # every parsed record, file order
    decrypted: bool = False  # plaintext hashes were checked (an identity was given)
    export: dict[str, Any] = field(default_factory=dict)  # filled in by an export

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    def item(self, kind: str, name: str) -> Item:
        for existing in self.items:
            if existing.kind == kind and existing.name == name:
                return existing
        created = Item(kind, name)
        self.items.append(created)
        return created

    def segment_ok(self, name: str) -> bool:
        return self.item("segment", name).ok

    @property
    def problems(self) -> list[str]:
        return [f"{i.kind} {i.name}: {p}" for i in self.items for p in i.problems]

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "session": self.session, "recorder": self.recorder, "ok": self.ok,
            "decrypted": self.decrypted, "segments": len(self.segments),
            "items": [i.to_json() for i in self.items]}
        if self.export:
            result["export"] = self.export
        return result

    def table(self) -> Table:
        return _table(f"{self.session} / {self.recorder}", [(self.recorder, self)], closed=None)


@dataclass
class SessionReport:
    session: str
    recordings: list[VerificationReport] = field(default_factory=list)
    closed: Item | None = None  # None: the session is not closed (no document)

    @property
    def ok(self) -> bool:
        return bool(self.recordings) and all(r.ok for r in self.recordings) and \
            (self.closed is None or self.closed.ok)

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "ok": self.ok,
                "closed": None if self.closed is None else self.closed.to_json(),
                "recordings": [r.to_json() for r in self.recordings]}

    def table(self) -> Table:
        return _table(f"session {self.session}", [(r.recorder, r) for r in self.recordings],
                      closed=self.closed)


def _table(title: str, reports: Sequence[tuple[str, VerificationReport]],
           closed: Item | None) -> Table:
    ok = all(r.ok for _, r in reports) and (closed is None or closed.ok)
    table = Table(title=f"{title}: {'verified' if ok else 'NOT VERIFIED'}", title_justify="left")
    for column in ("recorder", "item", "status", "detail"):
        table.add_column(column)
    rows: list[tuple[str, Item]] = [(rec, i) for rec, r in reports for i in r.items]
    if closed is not None:
        rows.append(("", closed))
    for recorder, item in rows:
        status = Text("ok", style="green") if item.ok else Text("FAIL", style="bold red")
        detail = "\n".join(item.problems) if item.problems else item.note
        # Text, not markup: names and messages come from files an attacker may have written.
        table.add_row(Text(recorder), Text(f"{item.kind} {item.name}"), status, Text(detail))
    return table


# --- trust roots ------------------------------------------------------------------------------


def load_identities(db: Path | str) -> dict[str, DeviceIdentity]:
    """The enrolled boxes' keys, read-only: the CLI runs beside a live controller. `db` is the
    SQLite file or the PostgreSQL URL (`database.url`)."""
    shown = redacted(db) if isinstance(db, str) else db
    if not is_postgresql(db) and not Path(db).exists():
        log.warning("identities_db_missing path=%s", db)
        return {}
    try:
        with open_readonly(db) as conn:
            rows = conn.execute(
                "SELECT device, sign_key, cert_serial, cert_fingerprint, enrolled_at, "
                "revoked_at, revoked_reason FROM device_identities").fetchall()
    except TiepdanError as exc:
        raise VerificationError(f"cannot open controller database {shown}: {exc}") from None
    except driver_errors() as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return {}
        raise VerificationError(f"cannot read controller database {shown}: {exc}") from None
    return {row["device"]: DeviceIdentity(*row) for row in rows}


def key_lookup(identities: Mapping[str, DeviceIdentity], *, controller_recorder: str,
               controller_key: Ed25519PublicKey) -> KeyLookup:
    """The key that may have signed a record at its time; None after a revocation."""
    keys: dict[str, Ed25519PublicKey] = {}
    for device, identity in identities.items():
        try:
            keys[device] = Ed25519PublicKey.from_public_bytes(identity.sign_key)
        except ValueError:
            log.warning("identity_key_invalid device=%s", device)

    def key_for(record: Record) -> Ed25519PublicKey | None:
        if record.device == controller_recorder:
            return controller_key
        identity = identities.get(record.device)
        if identity is None or not identity.trusted_at(record.utc_ms / 1000):
            return None
        return keys.get(record.device)

    return key_for


def canonical_signed(doc: Mapping[str, Any]) -> bytes:
    """The bytes a controller-signed JSON document's `sig` covers: itself with sig="", sorted."""
    return msgspec.json.encode({**doc, "sig": ""}, order="sorted")


def document_signed(doc: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    sig = doc.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        key.verify(base64.b64decode(sig, validate=True), canonical_signed(doc))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# --- one recording ----------------------------------------------------------------------------


def decrypt_segment(ciphertext: bytes, identities: Sequence[pyrage.x25519.Identity],
                    *, pt_sha256: str, pt_size: int) -> bytes:
    """Plaintext of a sealed segment, only if it decrypts whole and matches its manifest hash.

    In memory on purpose: a streaming decrypt can hand out plaintext before it fails on a
    corrupt chunk, and no such partial output may ever reach a file.
    """
    try:
        plaintext: bytes = pyrage.decrypt(ciphertext, list(identities))
    except pyrage.DecryptError as exc:
        raise SegmentError(f"does not decrypt: {exc}") from None
    if len(plaintext) != pt_size or hashlib.sha256(plaintext).hexdigest() != pt_sha256:
        raise SegmentError("decrypts, but the plaintext does not match the manifest's hash")
    return plaintext


class SegmentError(Corrupt):
    """A segment that failed its plaintext check."""


def verify_recording(directory: Path, *, recorder: str, session: str, key_for: KeyLookup,
                     controller_key: Ed25519PublicKey, archive_id: str | None = None,
                     identities: Sequence[pyrage.x25519.Identity] = ()) -> VerificationReport:
    """Check one recorder's directory: manifest chain, segment files, receipts, plaintexts.

    With `identities` (the archive's age identities) each segment is also decrypted in memory
    and its plaintext hash checked; without, only what the ciphertext proves is checked.
    """
    report = VerificationReport(session=session, recorder=recorder, decrypted=bool(identities))
    manifest = report.item("manifest", FILENAME)
    try:
        lines = [line for line in (directory / FILENAME).read_bytes().split(b"\n") if line]
    except FileNotFoundError:
        manifest.problems.append("missing")
        lines = []
    records, chain_problems = verify_chain(lines, device=recorder, session=session,
                                           key_for=key_for)
    report.records = records
    manifest.problems.extend(str(p) for p in chain_problems)
    if lines and not manifest.problems:
        manifest.note = f"{len(records)} records, chain and signatures valid"
    fatal: dict[int, list[str]] = {}
    for problem in chain_problems:
        if problem.code in _RECORD_FATAL:
            fatal.setdefault(problem.seq, []).append(f"manifest record {problem.seq}: "
                                                     f"{problem.code}: {problem.message}")
    if records and not any(r.kind in ("stop", "recovered") for r in records):
        manifest.note = (manifest.note + "; " if manifest.note else "") + \
            "no stop record yet (recording still running, or its end not uploaded)"

    receipts = _load_receipts(directory, report, recorder=recorder, session=session,
                              controller_key=controller_key, archive_id=archive_id)
    seen: set[str] = set()
    for record in records:
        if record.kind != "segment" or record.segment is None:
            continue
        seg = record.segment
        item = report.item("segment", seg.name)
        if seg.name in seen:
            item.problems.append(f"listed again by record {record.seq}")
            continue
        seen.add(seg.name)
        report.segments.append(record)
        item.problems.extend(fatal.get(record.seq, []))
        if not _safe_name(seg.name):
            item.problems.append("unsafe file name in manifest")
            continue
        _check_segment(directory / seg.name, record, item, receipts.get(seg.name, []),
                       identities)
    _check_strays(directory, seen, report)
    forks = directory / FORKS
    if forks.exists():
        count = len([line for line in forks.read_bytes().split(b"\n") if line.strip()])
        report.item("forks", FORKS).note = \
            f"{count} forked record(s) refused at upload and kept aside as evidence"
    log.info("recording_verified session=%s recorder=%s ok=%s segments=%d problems=%d",
             session, recorder, report.ok, len(report.segments), len(report.problems))
    return report


def _check_segment(path: Path, record: Record, item: Item, receipts: list[dict[str, Any]],
                   identities: Sequence[pyrage.x25519.Identity]) -> None:
    seg = record.segment
    assert seg is not None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        item.problems.append("file missing")
        data = None
    if data is not None:
        if len(data) != seg.ct_size:
            item.problems.append(f"size {len(data)} != manifest {seg.ct_size}")
        if hashlib.sha256(data).hexdigest() != seg.ct_sha256:
            item.problems.append("ciphertext sha256 does not match the manifest")
    matching = [r for r in receipts if r.get("ct_sha256") == seg.ct_sha256
                and r.get("ct_size") == seg.ct_size and r.get("index") == seg.index
                and r.get("record_seq") == record.seq]
    if not matching:
        item.problems.append("no valid archive receipt for this segment" if not receipts
                             else "archive receipt does not match the manifest record")
    if data is not None and identities:
        try:
            decrypt_segment(data, identities, pt_sha256=seg.pt_sha256, pt_size=seg.pt_size)
        except SegmentError as exc:
            item.problems.append(str(exc))
    if item.ok:
        checks = "hashes, receipt" + (", plaintext" if identities else "")
        item.note = f"#{seg.index} {seg.ct_size} B {seg.duration_ms} ms: {checks} ok"


def _load_receipts(directory: Path, report: VerificationReport, *, recorder: str, session: str,
                   controller_key: Ed25519PublicKey,
                   archive_id: str | None) -> dict[str, list[dict[str, Any]]]:
    """Valid receipts by segment name; invalid ones become problems on the receipts item."""
    item = report.item("receipts", RECEIPTS)
    valid: dict[str, list[dict[str, Any]]] = {}
    try:
        raw = (directory / RECEIPTS).read_bytes()
    except FileNotFoundError:
        item.problems.append("missing")
        return valid
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            doc = msgspec.json.decode(line)
        except msgspec.DecodeError:
            item.problems.append(f"line {number}: not JSON")
            continue
        if not isinstance(doc, dict):
            item.problems.append(f"line {number}: not a receipt")
            continue
        name = doc.get("name")
        if not document_signed(doc, controller_key):
            item.problems.append(f"line {number} ({name}): signature is not the controller's")
            continue
        wrong = [k for k, want in (("v", 1), ("recorder", recorder), ("session", session))
                 if doc.get(k) != want]
        if archive_id is not None and doc.get("archive") != archive_id:
            wrong.append("archive")
        if wrong or not isinstance(name, str):
            item.problems.append(f"line {number} ({name}): wrong {', '.join(wrong) or 'name'}")
            continue
        valid.setdefault(name, []).append(doc)
    if not item.problems:
        item.note = f"{sum(len(v) for v in valid.values())} receipts signed by the controller"
    return valid


def _check_strays(directory: Path, listed: set[str], report: VerificationReport) -> None:
    """A sealed file no record lists: a deleted record, or something planted."""
    if not directory.is_dir():
        return
    strays = sorted(p.name for p in directory.iterdir()
                    if p.name.endswith(SEGMENT_SUFFIX) and p.name not in listed)
    if strays:
        report.item("files", "unlisted").problems.extend(
            f"{name}: sealed file not listed by any manifest record" for name in strays)


def _safe_name(name: str) -> bool:
    return "/" not in name and "\\" not in name and name not in ("", ".", "..") and \
        name.endswith(SEGMENT_SUFFIX)


# --- a session --------------------------------------------------------------------------------


def session_dir(archive_dir: Path, session: str) -> Path:
    if not is_device_id(session):  # session ids share the id alphabet: no path tricks
        raise VerificationError(f"not a session id: {session!r}")
    path = archive_dir / "recordings" / session
    if not path.is_dir():
        raise VerificationError(f"no session {session!r} in the archive at {archive_dir}")
    return path


def recorders(archive_dir: Path, session: str) -> list[str]:
    return sorted(p.name for p in session_dir(archive_dir, session).iterdir() if p.is_dir())


def verify_session(archive_dir: Path, session: str, *, key_for: KeyLookup,
                   controller_key: Ed25519PublicKey, archive_id: str | None = None,
                   identities: Sequence[pyrage.x25519.Identity] = ()) -> SessionReport:
    """Every recording of a session, then the closed document against what verified."""
    base = session_dir(archive_dir, session)
    result = SessionReport(session=session)
    for recorder in recorders(archive_dir, session):
        result.recordings.append(verify_recording(
            base / recorder, recorder=recorder, session=session, key_for=key_for,
            controller_key=controller_key, archive_id=archive_id, identities=identities))
    if not result.recordings:
        empty = Item("session", session, problems=["no recordings"])
        result.recordings.append(VerificationReport(session=session, recorder="-", items=[empty]))
    closed_path = archive_dir / "closed" / f"{session}.json"
    if closed_path.exists():
        result.closed = check_closed(closed_path, session, result.recordings,
                                     controller_key=controller_key)
    return result


def check_closed(path: Path, session: str, reports: Sequence[VerificationReport], *,
                 controller_key: Ed25519PublicKey) -> Item:
    """The closed-session document: controller-signed, committing to exactly what verified.

    It must list exactly the segments that verify (recorder, name, ciphertext hash), and each
    manifest prefix it commits to (record count and last line hash) must be the one on disk.
    """
    item = Item("closed", path.name)
    try:
        doc = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        item.problems.append(f"unreadable: {exc}")
        return item
    if not isinstance(doc, dict):
        item.problems.append("not a closed-session document")
        return item
    if not document_signed(doc, controller_key):
        item.problems.append("signature is not the controller's")
    if doc.get("session") != session:
        item.problems.append(f"names session {doc.get('session')!r}")
    entries = closed_recordings(doc)
    if not entries:
        item.problems.append("lists no recordings")
        return item
    by_recorder = {r.recorder: r for r in reports}
    listed: set[tuple[str, str, str]] = set()
    for entry in entries:
        report = by_recorder.get(entry.recorder)
        if report is None:
            item.problems.append(f"lists recording {entry.recorder}, not in the archive")
        elif entry.records is not None:
            n = entry.records
            if n < 1 or n > len(report.records) or report.records[n - 1].hash != entry.last_hash:
                item.problems.append(f"{entry.recorder}: commits to a manifest prefix of {n} "
                                     "records that is not the one archived")
        listed |= {(entry.recorder, name, ct) for name, ct in entry.segments}
    verified: set[tuple[str, str, str]] = set()
    everything: set[tuple[str, str]] = set()
    for report in reports:
        for record in report.segments:
            assert record.segment is not None
            everything.add((report.recorder, record.segment.name))
            if report.segment_ok(record.segment.name):
                verified.add((report.recorder, record.segment.name, record.segment.ct_sha256))
    for recorder, name, _ in sorted(listed - verified):
        why = "does not verify" if (recorder, name) in everything \
            else "is not in the archive (or its hash differs)"
        item.problems.append(f"lists {recorder}/{name}, which {why}")
    for recorder, name, _ in sorted(verified - listed):
        item.problems.append(f"does not list {recorder}/{name}")
    if item.ok:
        item.note = (f"signed by the controller; closed by {doc.get('closed_by', '?')}; "
                     f"{len(listed)} segments listed")
    return item


@dataclass(frozen=True)
class ClosedEntry:
    recorder: str
    segments: list[tuple[str, str]]  # (name, ct_sha256)
    records: int | None  # the manifest prefix committed to, when the document says
    last_hash: str | None


def closed_recordings(doc: Mapping[str, Any]) -> list[ClosedEntry]:
    """The document's `recordings`: [{recorder, records, last_hash, segments: [{name,
    ct_sha256, ...}]}] as `controller.archive.ClosedSession` writes them."""
    entries: list[ClosedEntry] = []
    recordings = doc.get("recordings")
    for entry in recordings if isinstance(recordings, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("segments"), list):
            continue
        segments = [(str(s.get("name")), str(s.get("ct_sha256")))
                    for s in entry["segments"] if isinstance(s, dict)]
        records = entry.get("records")
        last_hash = entry.get("last_hash")
        entries.append(ClosedEntry(
            str(entry.get("recorder")), segments,
            records if isinstance(records, int) else None,
            last_hash if isinstance(last_hash, str) else None))
    return entries
