"""The local channel between the agent and the updater: one request, then frames until a reply.

The agent (and the slot launcher) write one JSON line, a `Request`; the updater answers with
zero or more `Progress` lines (download progress to relay over MQTT) and one `Reply`. JSON lines
so that the launcher, which may import only the standard library, speaks it with `json`.

Requests name targets and slots, never files or hashes: the updater fetches and verifies what
it installs itself, from the signed TUF metadata, whatever the agent believes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from tiepdan.errors import BadInput, Conflict

MAX_LINE = 64 * 1024  # a request is a few hundred bytes; anything longer is refused unread

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                   pattern=r"^[A-Za-z0-9._+/-]+\Z")]
SlotName = Literal["a", "b"]
Url = Annotated[str, msgspec.Meta(max_length=2000, pattern=r"^(https?://[^\s]+)?\Z")]
Text = Annotated[str, msgspec.Meta(max_length=2000)]


class Fetch(msgspec.Struct, tag="fetch", tag_field="op", frozen=True, forbid_unknown_fields=True):
    """Refresh the metadata, check the policy, download and verify `target` for `job`."""

    job: Name
    target: Name
    version: Annotated[str, msgspec.Meta(max_length=100)]
    repository: Url = ""  # the job's; the updater's own `ota.repository` wins when set


class Install(msgspec.Struct, tag="install", tag_field="op", frozen=True,
              forbid_unknown_fields=True):
    """Install the fetched and verified `target` into the spare slot. With the job's fields,
    an updater that restarted since the fetch fetches (and verifies) it again first."""

    target: Name
    job: Name | None = None
    version: Annotated[str, msgspec.Meta(max_length=100)] = ""
    repository: Url = ""


class Switch(msgspec.Struct, tag="switch", tag_field="op", frozen=True,
             forbid_unknown_fields=True):
    """Start a trial of `slot`, which must hold the signed version of `target`."""

    slot: SlotName
    target: Name
    job: Name | None = None


class Commit(msgspec.Struct, tag="commit", tag_field="op", frozen=True,
             forbid_unknown_fields=True):
    slot: SlotName


class Rollback(msgspec.Struct, tag="rollback", tag_field="op", frozen=True,
               forbid_unknown_fields=True):
    slot: SlotName
    reason: Text


class Reported(msgspec.Struct, tag="reported", tag_field="op", frozen=True,
               forbid_unknown_fields=True):
    """The last trial's outcome reached the controller."""


class Started(msgspec.Struct, tag="started", tag_field="op", frozen=True,
              forbid_unknown_fields=True):
    """The launcher of `slot` starts; the agent's pid is the caller's (SO_PEERCRED)."""

    slot: SlotName


Request = Fetch | Install | Switch | Commit | Rollback | Reported | Started


class Progress(msgspec.Struct, tag="progress", tag_field="op", frozen=True):
    percent: float


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class Reply(msgspec.Struct, tag="reply", tag_field="op", frozen=True):
    ok: bool
    result: Any = None
    error: ErrorBody | None = None


Frame = Progress | Reply

JobOutcome = Literal["rejected", "failed", "succeeded"]


class BadRequest(BadInput):
    """Not a request of this channel (cut, too long, not JSON, unknown op or field)."""


class Refused(Conflict):
    """The updater ends the job: `status` is what the agent reports (rejected, failed, or
    succeeded when the box already runs that version)."""

    code = "refused"

    def __init__(self, status: JobOutcome, reason: str) -> None:
        super().__init__(reason)
        self.status: JobOutcome = status
        self.reason = reason


_requests = msgspec.json.Decoder(Request)
_frames = msgspec.json.Decoder(Frame)
_encoder = msgspec.json.Encoder()


def encode(message: Request | Frame) -> bytes:
    return _encoder.encode(message) + b"\n"


def decode_request(line: bytes) -> Request:
    return _requests.decode(line)


def decode_frame(line: bytes) -> Frame:
    return _frames.decode(line)
