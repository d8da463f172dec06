"""Export of an archived recording to MP4: the file plays (PyAV reads it) with every stream."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import pytest

from tests.recording.ver_support import (
    BOX,
    BOX_STREAMS,
    BRIDGE,
    BRIDGE_STREAMS,
    FPS,
    SEGMENT_MS,
    SESSION,
    Archive,
    build_archive,
    files_in,
)
from tiepdan.controller.cli.archive import main


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return build_archive(tmp_path / "archive")


def _probe(path: Path) -> tuple[float, dict[str, tuple[str, str]], int]:
    """(duration s, title -> (type, codec), decoded sent/composed video frames)."""
    with av.open(str(path)) as container:
        streams = {}
        for stream in container.streams:
            title = stream.metadata.get("title") or stream.metadata.get("name")
            streams[title] = (stream.type, stream.codec_context.name)
        assert container.duration is not None
        duration = container.duration / av.time_base
        frames = sum(1 for _ in container.decode(video=0))
        for _ in container.decode(audio=0):  # the Opus decodes too
            pass
    return duration, streams, frames


@pytest.mark.parametrize(("recorder", "titles", "segments"), [
    (BOX, BOX_STREAMS, 3), (BRIDGE, BRIDGE_STREAMS, 2)])
def test_export_writes_playable_mp4_and_report(archive: Archive, tmp_path: Path, recorder: str,
                                               titles: tuple[str, ...], segments: int,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exports" / f"{recorder}.mp4"
    assert main(archive.cli("export", SESSION, "--recorder", recorder, "--identity",
                            str(archive.identity_file), "--out", str(out))) == 0
    assert "exported" in capsys.readouterr().out
    assert files_in(out.parent) == [f"{recorder}.mp4", f"{recorder}.verification.json"]
    duration, streams, frames = _probe(out)
    assert streams == {t: ("video" if t.endswith("video") else "audio",
                           "h264" if t.endswith("video") else "opus") for t in titles}
    assert frames == segments * SEGMENT_MS * FPS // 1000
    assert duration == pytest.approx(segments * SEGMENT_MS / 1000, abs=0.05)
    report = json.loads((out.parent / f"{recorder}.verification.json").read_text())
    assert report["ok"] is True and report["decrypted"] is True
    assert report["export"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["export"]["gaps"] == []
    assert len(report["export"]["segments"]) == segments
    assert report["export"]["duration_ms"] == pytest.approx(segments * SEGMENT_MS, abs=50)
    assert all("plaintext ok" in i["note"] for i in report["items"] if i["kind"] == "segment")


def test_export_refuses_missing_segment_and_writes_nothing(
        archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive.recordings[BOX].segment_file(1).unlink()
    out = tmp_path / "exports"
    args = ["export", SESSION, "--recorder", BOX, "--identity", str(archive.identity_file),
            "--out", str(out / "box.mp4")]
    assert main(archive.cli(*args, "--json")) == 1
    printed = capsys.readouterr().out
    report = json.loads(printed[:printed.rindex("}") + 1])
    failing = [i for i in report["items"] if not i["ok"]]
    assert [(i["name"], i["problems"]) for i in failing] == [("000001.mkv.age", ["file missing"])]
    assert "export refused" in printed
    assert not out.exists() or files_in(out) == []
    # --allow-gaps: the two that verify, the gap named in the report; exit 1 (not whole).
    assert main(archive.cli(*args, "--allow-gaps")) == 1
    assert files_in(out) == ["box.mp4", "box.verification.json"]
    report = json.loads((out / "box.verification.json").read_text())
    assert report["export"]["gaps"] == ["000001.mkv.age"]
    _, _, frames = _probe(out / "box.mp4")
    assert frames == 2 * SEGMENT_MS * FPS // 1000


def test_export_cli_errors(archive: Archive, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exports" / "x.mp4"
    assert main(archive.cli("export", SESSION, "--recorder", "box-zz", "--identity",
                            str(archive.identity_file), "--out", str(out))) == 2
    assert "no recording by 'box-zz'" in capsys.readouterr().out
    wrong = tmp_path / "other.txt"
    assert main(["keygen", "--out", str(wrong)]) == 0
    capsys.readouterr()
    # A valid identity that is not the archive's: nothing decrypts, nothing is written.
    assert main(archive.cli("export", SESSION, "--recorder", BOX, "--identity", str(wrong),
                            "--out", str(out))) == 1
    assert "does not decrypt" in capsys.readouterr().out
    assert files_in(out.parent) == []
