"""The archivist's verify on a real archive directory: clean, then each manifest/receipt attack."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from tests.recording.ver_support import (
    BOX,
    BRIDGE,
    SESSION,
    Archive,
    build_archive,
    plaintexts,
    sign_doc,
    write_recording,
)
from tiepdan.controller.archive.verification import (
    SessionReport,
    key_lookup,
    load_identities,
    verify_session,
)
from tiepdan.controller.cli.archive import main
from tiepdan.controller.identities import Identities
from tiepdan.firmware.evidence.manifest import Manifest, parse_line, sign

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return build_archive(tmp_path)


def verify(archive: Archive, *, decrypt: bool = False) -> SessionReport:
    public = archive.controller_key.public_key()
    key_for = key_lookup(load_identities(archive.data_dir / "controller.db"),
                         controller_recorder=BRIDGE, controller_key=public)
    return verify_session(archive.dir, SESSION, key_for=key_for, controller_key=public,
                          archive_id="central",
                          identities=[archive.identity] if decrypt else [])


def recording(report: SessionReport, recorder: str = BOX) -> dict[str, list[str]]:
    """Problems by item name for one recorder (only items that have problems)."""
    found = next(r for r in report.recordings if r.recorder == recorder)
    return {i.name: i.problems for i in found.items if i.problems}


def test_clean_archive_verifies_with_and_without_identity(archive: Archive) -> None:
    for decrypt in (False, True):
        report = verify(archive, decrypt=decrypt)
        assert report.ok, report.to_json()
        assert [r.recorder for r in report.recordings] == [BOX, BRIDGE]
        assert [len(r.segments) for r in report.recordings] == [3, 2]
        assert report.closed is not None and report.closed.ok
    doc = report.to_json()
    assert json.loads(json.dumps(doc))["ok"] is True
    assert all(r["decrypted"] for r in doc["recordings"])
    console = Console(record=True, width=160)
    console.print(report.table())
    text = console.export_text()
    assert "verified" in text and "000002.mkv.age" in text and "FAIL" not in text


def test_standard_age_cli_decrypts_a_segment(archive: Archive, tmp_path: Path) -> None:
    if shutil.which("age") is None:
        pytest.skip("the age CLI is not installed (Debian package age)")
    rec = archive.recordings[BOX]
    out = subprocess.run(["age", "-d", "-i", str(archive.identity_file),
                          str(rec.segment_file(1))], capture_output=True, check=True)
    assert out.stdout == plaintexts(BOX, 3)[1]


def _delete(lines: list[bytes], archive: Archive) -> list[bytes]:
    return lines[:2] + lines[3:]


def _reorder(lines: list[bytes], archive: Archive) -> list[bytes]:
    return [lines[0], lines[2], lines[1], *lines[3:]]


def _edit(lines: list[bytes], archive: Archive) -> list[bytes]:
    record = parse_line(lines[2])
    assert record.segment is not None
    edited = msgspec.structs.replace(record, segment=msgspec.structs.replace(
        record.segment, duration_ms=record.segment.duration_ms + 1))
    return [*lines[:2], edited.line(), *lines[3:]]


def _replay(lines: list[bytes], archive: Archive) -> list[bytes]:
    return [*lines, lines[1]]


def _fork(lines: list[bytes], archive: Archive) -> list[bytes]:
    # A second, validly signed record 2 on top of record 1: two histories from one point.
    original = parse_line(lines[2])
    other = sign(msgspec.structs.replace(original, kind="recovered", segment=None,
                                         detail={"why": "fork"}, sig=""), archive.box_key)
    return [*lines, other.line()]


def _unknown_key(lines: list[bytes], archive: Archive) -> list[bytes]:
    record = parse_line(lines[1])
    forged = sign(msgspec.structs.replace(record, sig=""), Ed25519PrivateKey.generate())
    return [lines[0], forged.line(), *lines[2:]]


@pytest.mark.parametrize(("tamper", "codes", "segment"), [
    (_delete, {"gap", "chain"}, "000001.mkv.age"),
    (_reorder, {"order", "gap", "chain"}, None),
    (_edit, {"signature", "chain"}, "000001.mkv.age"),
    (_replay, {"replay"}, None),
    (_fork, {"fork"}, None),
    (_unknown_key, {"signature"}, "000000.mkv.age"),
])
def test_manifest_tampering_is_detected(archive: Archive, tamper, codes: set[str],
                                        segment: str | None) -> None:
    rec = archive.recordings[BOX]
    rec.write_lines(tamper(rec.lines(), archive))
    report = verify(archive)
    assert not report.ok
    problems = recording(report)
    manifest = " ".join(problems["manifest.jsonl"])
    for code in codes:
        assert f": {code}:" in manifest, manifest
    if tamper is _delete:  # the sealed file is still there, but no record vouches for it
        assert any(segment in p for p in problems["unlisted"])
    elif segment is not None:
        assert any("manifest record" in p for p in problems[segment])
    assert recording(report, BRIDGE) == {}  # the other recording is untouched


def test_record_by_revoked_key_after_revocation_is_untrusted(archive: Archive) -> None:
    rec = archive.recordings[BOX]
    before = len(rec.lines())
    manifest = Manifest(rec.manifest, device=BOX, session=SESSION, key=archive.box_key,
                        boot_id="boot-2", clock_synced=lambda: True)
    time.sleep(0.01)
    Identities(archive.db).revoke(BOX, "stolen", at=time.time())
    time.sleep(0.01)
    late = manifest.append("recovered", detail={"after": "theft"})
    manifest.close()
    report = verify(archive)
    manifest_problems = recording(report)["manifest.jsonl"]
    assert manifest_problems == [f"record {late.seq}: untrusted: no trusted key for "
                                 f"'{BOX}' at {late.utc_ms}"]
    assert late.seq == before
    # Revoked before anything was recorded: every record is untrusted.
    Identities(archive.db).bind(BOX, archive.box_key.public_key().public_bytes_raw())
    Identities(archive.db).revoke(BOX, "stolen", at=0)
    problems = recording(verify(archive))
    assert sum(": untrusted:" in p for p in problems["manifest.jsonl"]) == before + 1
    assert all("untrusted" in " ".join(problems[f"{i:06d}.mkv.age"]) for i in range(3))


def test_recorder_with_unknown_key_is_untrusted(archive: Archive) -> None:
    stranger = Ed25519PrivateKey.generate()
    plain = list(plaintexts(BOX, 1))
    sealed = [pyrage.encrypt(pt, [archive.identity.to_public()]) for pt in plain]
    write_recording(archive.dir, "box-x", stranger, archive.controller_key, plain, sealed)
    report = verify(archive)
    problems = recording(report, "box-x")
    assert all(": untrusted:" in p for p in problems["manifest.jsonl"])
    assert "untrusted" in " ".join(problems["000000.mkv.age"])
    assert not report.ok
    assert report.closed is not None and report.closed.ok  # lists what verifies, not box-x


def test_forged_receipt_is_detected(archive: Archive) -> None:
    rec = archive.recordings[BOX]
    path = rec.dir / "receipts.jsonl"
    lines = path.read_bytes().splitlines()
    genuine = msgspec.json.decode(lines[1])
    forged = sign_doc({k: v for k, v in genuine.items() if k != "sig"},
                      Ed25519PrivateKey.generate())
    path.write_bytes(b"\n".join([lines[0], msgspec.json.encode(forged), lines[2]]) + b"\n")
    problems = recording(verify(archive))
    assert problems["receipts.jsonl"] == [
        "line 2 (000001.mkv.age): signature is not the controller's"]
    assert problems["000001.mkv.age"] == ["no valid archive receipt for this segment"]


def test_receipt_for_other_bytes_is_detected(archive: Archive) -> None:
    rec = archive.recordings[BOX]
    path = rec.dir / "receipts.jsonl"
    lines = path.read_bytes().splitlines()
    genuine = msgspec.json.decode(lines[0])
    other = sign_doc({**genuine, "ct_sha256": "0" * 64}, archive.controller_key)
    path.write_bytes(b"\n".join([msgspec.json.encode(other), *lines[1:]]) + b"\n")
    problems = recording(verify(archive))
    assert problems == {"000000.mkv.age": ["archive receipt does not match the manifest record"]}


def test_missing_segment_file_fails_recording_and_closed_document(archive: Archive) -> None:
    archive.recordings[BOX].segment_file(2).unlink()
    report = verify(archive)
    assert recording(report) == {"000002.mkv.age": ["file missing"]}
    assert report.closed is not None
    assert report.closed.problems == [f"lists {BOX}/000002.mkv.age, which does not verify"]


def test_closed_document_must_be_signed_and_complete(archive: Archive) -> None:
    doc = msgspec.json.decode(archive.closed.read_bytes())
    doc["recordings"][0]["segments"].pop()
    archive.closed.write_bytes(msgspec.json.encode(doc))  # edited, old signature
    report = verify(archive)
    assert report.closed is not None
    assert "signature is not the controller's" in report.closed.problems
    assert f"does not list {BOX}/000002.mkv.age" in report.closed.problems
    resigned = sign_doc({k: v for k, v in doc.items() if k != "sig"}, archive.controller_key)
    archive.closed.write_bytes(msgspec.json.encode(resigned))
    report = verify(archive)
    assert report.closed is not None
    assert report.closed.problems == [f"does not list {BOX}/000002.mkv.age"]
    doc["recordings"][0]["records"] = 2  # commits to another manifest prefix
    archive.closed.write_bytes(msgspec.json.encode(
        sign_doc({k: v for k, v in doc.items() if k != "sig"}, archive.controller_key)))
    report = verify(archive)
    assert report.closed is not None
    assert f"{BOX}: commits to a manifest prefix of 2 records that is not the one archived" \
        in report.closed.problems
    archive.closed.unlink()
    report = verify(archive)
    assert report.ok and report.closed is None


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_keygen_writes_private_identity_and_prints_recipient(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "identity.txt"
    assert main(["keygen", "--out", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    recipient = next(line for line in capsys.readouterr().out.split()
                     if line.startswith("age1"))
    secret = next(line for line in path.read_text().splitlines()
                  if line.startswith("AGE-SECRET-KEY-1"))
    identity = pyrage.x25519.Identity.from_str(secret)
    assert str(identity.to_public()) == recipient
    sealed = pyrage.encrypt(b"evidence", [pyrage.x25519.Recipient.from_str(recipient)])
    if shutil.which("age") is not None:
        out = subprocess.run(["age", "-d", "-i", str(path)], input=sealed, capture_output=True,
                             check=True)
        assert out.stdout == b"evidence"
    assert main(["keygen", "--out", str(path)]) == 2  # never overwrites an identity
    assert "exists" in capsys.readouterr().out


def test_cli_list_and_verify(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(archive.cli("list", "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"session": SESSION, "recorders": [BOX, BRIDGE], "segments": 5,
                     "bytes": sum(len(c) for r in archive.recordings.values()
                                  for c in r.ciphertexts),
                     "started_utc_ms": archive.recordings[BOX].records[0].utc_ms,
                     "closed": True}]
    assert main(archive.cli("list")) == 0
    assert SESSION[:10] in capsys.readouterr().out
    assert main(archive.cli("verify", SESSION, "--identity", str(archive.identity_file),
                            "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["closed"]["ok"] is True
    archive.recordings[BRIDGE].segment_file(0).write_bytes(b"not age")
    assert main(archive.cli("verify", SESSION)) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out
    # Names from the archive are shown as they are, never read as rich markup.
    (archive.dir / "recordings" / SESSION / "[bold]planted").mkdir()
    assert main(archive.cli("verify", SESSION)) == 1
    assert "[bold]planted" in capsys.readouterr().out


def test_cli_clear_errors(archive: Archive, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(archive.cli("verify", "s-nope")) == 2
    assert "no session 's-nope'" in capsys.readouterr().out
    assert main(archive.cli("verify", "../../etc")) == 2
    assert "not a session id" in capsys.readouterr().out
    assert main(["--config", str(archive.config), "--archive", str(tmp_path / "none"),
                 "list"]) == 2
    assert "no archive at" in capsys.readouterr().out
    bad = tmp_path / "bad-identity.txt"
    bad.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    assert main(archive.cli("verify", SESSION, "--identity", str(bad))) == 2
    assert "not an age X25519 identity" in capsys.readouterr().out
    assert main(archive.cli("verify", SESSION, "--identity", str(tmp_path / "absent"))) == 2
    assert "cannot read identity file" in capsys.readouterr().out
    broken = tmp_path / "broken.toml"
    broken.write_text("[controller\n")
    assert main(["--config", str(broken), "list"]) == 2
    assert "not valid TOML" in capsys.readouterr().out


def test_cli_as_a_process(archive: Archive) -> None:
    env = {**os.environ, "TIEPDAN_CONTROLLER_CONFIG": str(archive.config), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "tiepdan.controller.cli.archive", "verify", SESSION,
         "--identity", str(archive.identity_file)],
        check=False, capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout and "Traceback" not in done.stderr
    archive.recordings[BOX].segment_file(1).unlink()
    done = subprocess.run(
        [sys.executable, "-m", "tiepdan.controller.cli.archive", "verify", SESSION],
        check=False, capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=60)
    assert done.returncode == 1
    assert "file missing" in done.stdout and "Traceback" not in done.stderr
