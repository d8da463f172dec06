"""The closed-session record: the signed document that says a session's recordings are all
archived, whole and unbroken, and the list of what is still missing while they are not."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec


class ClosedSegment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    index: int
    ct_sha256: str
    ct_size: int
    pt_sha256: str


class ClosedRecording(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    recorder: str
    records: int  # the manifest prefix this document commits to ...
    last_hash: str  # ... and the hash of its last line
    end: str  # "stop", or "recovered" when the recorder crashed and ended with its recovery
    segments: list[ClosedSegment]


class ClosedSession(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signed closed-session document (`closed/<session>.json`)."""

    v: int
    archive: str
    session: str
    closed_utc_ms: int
    closed_by: str
    points: list[str]
    recordings: list[ClosedRecording]
    sig: str = ""

    def signed_bytes(self) -> bytes:
        return msgspec.json.encode(msgspec.structs.replace(self, sig=""), order="sorted")


@dataclass
class Problems:
    """Why a session cannot close yet; one line per missing or failing piece."""

    session: str
    items: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(self.items)
