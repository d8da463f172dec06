"""How much of a session's recording has reached the archive, read from what the uploader keeps.

A segment is safe once the archive's signed receipt for it has been checked: the uploader keeps
each such receipt in `receipts.jsonl` beside the manifest at once, and appends an `uploaded`
record to the manifest when it may write there (not while the box's call still names the
session). Either counts, so the hall's screen needs no state of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiepdan.firmware.evidence.manifest import FILENAME, ManifestError, parse_line
from tiepdan.firmware.recording.uploader import RECEIPTS

__all__ = ["upload_percent"]


def upload_percent(directory: Path) -> int | None:
    """Percent of the session's sealed segments archived (floor), None when nothing to upload."""
    try:
        data = (directory / FILENAME).read_bytes()
    except OSError:
        return None
    segments: set[str] = set()
    uploaded: set[str] = set()
    for line in data.split(b"\n")[:-1]:
        try:
            record = parse_line(line)
        except ManifestError:
            break  # a line being written right now
        if record.kind == "segment" and record.segment is not None:
            segments.add(record.segment.name)
        elif record.kind == "uploaded":
            uploaded.add(str(record.detail.get("name")))
    if not segments:
        return None
    uploaded |= _receipts(directory / RECEIPTS)
    return len(segments & uploaded) * 100 // len(segments)


def _receipts(path: Path) -> set[str]:
    names: set[str] = set()
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            name = json.loads(line)["receipt"]["name"]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line: the uploader fetches that receipt again
        if isinstance(name, str):
            names.add(name)
    return names
