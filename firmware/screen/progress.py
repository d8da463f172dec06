"""How much of a session's recording has reached the archive, read from its manifest.

The uploader appends an `uploaded` record for each segment once the archive's receipt checks
out, so the manifest alone tells the hall's screen the share that is safe: no new state to keep.
"""

from __future__ import annotations

from pathlib import Path

from tiepdan.firmware.evidence.manifest import FILENAME, ManifestError, parse_line

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
    return len(segments & uploaded) * 100 // len(segments)
