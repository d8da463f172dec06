"""Tampered age segments: verify-with-identity and export reject each, leaving no plaintext.

Each case damages segment 1 of the box's 3 (each > 128 KiB, so several 64 KiB age chunks),
twice: once as the archive would hold it (the ciphertext hash no longer matches the signed
manifest), and once "signed as written" (manifest and receipts re-made over the damaged bytes,
as a faulty box would), where only decryption can tell and the export has already muxed
segment 0 into its temporary file when it hits the damage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.recording.ver_support import (
    BOX,
    CHUNK,
    SESSION,
    Archive,
    build_archive,
    chunks,
    files_in,
    header_end,
)
from tiepdan.controller.archive.export import ExportError, export_recording
from tiepdan.controller.archive.verification import (
    VerificationReport,
    key_lookup,
    load_identities,
    verify_session,
)

TARGET = 1


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def truncate_at_chunk_boundary(ct: bytes) -> bytes:
    head, body = chunks(ct)
    assert len(body) >= 4
    return head + b"".join(body[:2])


def truncate_mid_chunk(ct: bytes) -> bytes:
    head, _ = chunks(ct)
    return ct[:len(head) + 2 * CHUNK + 1000]


def remove_final_chunk(ct: bytes) -> bytes:
    head, body = chunks(ct)
    return head + b"".join(body[:-1])


def flip_header(ct: bytes) -> bytes:
    # A letter in the X25519 stanza's body, swapped for another base64 letter.
    line = ct.index(b"\n", ct.index(b"-> X25519 ")) + 1
    at = next(i for i in range(line, line + 43) if chr(ct[i]).isalpha())
    return ct[:at] + chr(ct[at]).swapcase().encode() + ct[at + 1:]


def flip_nonce(ct: bytes) -> bytes:
    return _flip(ct, header_end(ct) + 3)


def flip_payload(ct: bytes) -> bytes:
    head, _ = chunks(ct)
    return _flip(ct, len(head) + CHUNK + CHUNK // 2)


def flip_tag(ct: bytes) -> bytes:
    head, _ = chunks(ct)
    return _flip(ct, len(head) + 2 * CHUNK - 1)  # last byte of chunk 1's Poly1305 tag


def swap_chunks(ct: bytes) -> bytes:
    head, body = chunks(ct)
    return head + b"".join([body[0], body[2], body[1], *body[3:]])


def duplicate_chunk(ct: bytes) -> bytes:
    head, body = chunks(ct)
    return head + b"".join([body[0], body[1], body[1], *body[2:]])


def append_garbage(ct: bytes) -> bytes:
    return ct + b"\x00garbage after the final chunk" * 4


TAMPERS: list[Callable[[bytes], bytes]] = [
    truncate_at_chunk_boundary, truncate_mid_chunk, remove_final_chunk, flip_header,
    flip_nonce, flip_payload, flip_tag, swap_chunks, duplicate_chunk, append_garbage]


def _on_target(tamper: Callable[[bytes], bytes]) -> Callable[[list[bytes]], list[bytes]]:
    def apply(sealed: list[bytes]) -> list[bytes]:
        out = list(sealed)
        assert len(out[TARGET]) > 2 * CHUNK + 2048
        out[TARGET] = tamper(out[TARGET])
        assert out[TARGET] != sealed[TARGET]
        return out
    return apply


def _trust(archive: Archive) -> dict[str, object]:
    public = archive.controller_key.public_key()
    return {"key_for": key_lookup(load_identities(archive.data_dir / "controller.db"),
                                  controller_recorder="controller-central",
                                  controller_key=public),
            "controller_key": public}


def _box(archive: Archive, *, decrypt: bool) -> VerificationReport:
    report = verify_session(archive.dir, SESSION, identities=[archive.identity] if decrypt
                            else [], **_trust(archive))  # type: ignore[arg-type]
    return next(r for r in report.recordings if r.recorder == BOX)


def _export(archive: Archive, out_dir: Path, allow_gaps: bool = False) -> VerificationReport:
    return export_recording(archive.dir, SESSION, BOX, out=out_dir / "box.mp4",
                            identities=[archive.identity], allow_gaps=allow_gaps,
                            **_trust(archive))  # type: ignore[arg-type]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda t: t.__name__)
def test_tampered_segment_as_archived(tamper: Callable[[bytes], bytes], tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "a", closed=False)
    rec = archive.recordings[BOX]
    rec.segment_file(TARGET).write_bytes(_on_target(tamper)(rec.ciphertexts)[TARGET])
    # The signed manifest already tells: the bytes are not the ones the box hashed.
    name = f"{TARGET:06d}.mkv.age"
    report = _box(archive, decrypt=True)
    problems = {i.name: i.problems for i in report.items if i.problems}
    assert set(problems) == {name}
    assert "ciphertext sha256 does not match the manifest" in problems[name]
    assert any(p.startswith("does not decrypt") for p in problems[name]), problems
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as refused:
        _export(archive, out)
    assert not refused.value.report.segment_ok(name)
    assert files_in(out) == []


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda t: t.__name__)
def test_tampered_segment_signed_as_written(tamper: Callable[[bytes], bytes],
                                            tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "a")
    sealed = _on_target(tamper)(archive.recordings[BOX].ciphertexts)
    archive.rewrite_recording(BOX, sealed)
    assert _box(archive, decrypt=False).ok  # hashes, chain, receipts all agree...
    name = f"{TARGET:06d}.mkv.age"
    report = _box(archive, decrypt=True)  # ...but age does not
    problems = {i.name: i.problems for i in report.items if i.problems}
    assert list(problems) == [name]
    assert problems[name][0].startswith("does not decrypt"), problems
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as failed:
        _export(archive, out)
    items = {i.name: i for i in failed.value.report.items}
    assert "muxed" in items["000000.mkv.age"].note  # plaintext had reached the temp file
    assert items[name].problems[0].startswith("does not decrypt")
    assert files_in(out) == []  # temp MP4 deleted, no report claiming success


def test_allow_gaps_exports_what_verifies(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "a")
    archive.rewrite_recording(BOX, _on_target(flip_payload)(archive.recordings[BOX].ciphertexts))
    out = tmp_path / "out"
    report = _export(archive, out, allow_gaps=True)
    assert not report.ok
    assert report.export["segments"] == ["000000.mkv.age", "000002.mkv.age"]
    assert report.export["gaps"] == ["000001.mkv.age"]
    assert files_in(out) == ["box.mp4", "box.verification.json"]
