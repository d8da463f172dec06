"""The wire contract between boxes and the controller: MQTT topics and payload schemas, v1.

Both sides import this module, so a change here is a protocol change. Payloads are JSON with
`ts` in epoch milliseconds. Fields a receiver knows are validated strictly (type, range,
pattern, size); fields it does not know are ignored, because a fleet mid-update always runs
two firmware versions at once and must keep talking. A breaking change moves to `tiepdan/v2`.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeGuard, TypeVar, get_args

import msgspec

from tiepdan.errors import BadInput

VERSION: Final = "v1"
PREFIX: Final = f"tiepdan/{VERSION}"

# Largest payload either side accepts; SDP with candidates and log bundles stay well below.
MAX_PAYLOAD: Final = 256 * 1024

ID_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z"
_ID_RE: Final = re.compile(ID_PATTERN)
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")

DeviceId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,31}\Z")]
Millis = Annotated[int, msgspec.Meta(ge=0)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
ShortText = Annotated[str, msgspec.Meta(max_length=200)]
MessageId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]


class ProtocolError(BadInput):
    """A message that does not follow this contract: wrong topic, wrong shape, too large."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return uuid.uuid4().hex


def is_device_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


def check_device_id(value: str) -> str:
    if not is_device_id(value):
        raise ProtocolError(
            f"invalid device id {value!r}: use 1-63 of a-z, 0-9 and '-', not starting or "
            "ending with '-'"
        )
    return value


# -- topics -------------------------------------------------------------------------------------


def device_root(device: str) -> str:
    return f"{PREFIX}/d/{check_device_id(device)}"


def state_topic(device: str) -> str:
    return f"{device_root(device)}/$state"


def birth_topic(device: str) -> str:
    return f"{device_root(device)}/$birth"


def tele_topic(device: str, stream: str) -> str:
    return f"{device_root(device)}/tele/{_name(stream)}"


def event_topic(device: str, kind: str) -> str:
    return f"{device_root(device)}/evt/{_name(kind)}"


def desired_topic(device: str) -> str:
    return f"{device_root(device)}/state/desired"


def reported_topic(device: str) -> str:
    return f"{device_root(device)}/state/reported"


def command_topic(device: str, name: str) -> str:
    return f"{device_root(device)}/cmd/{_name(name)}"


def response_topic(device: str, requester: str) -> str:
    """Responses stay inside the device's subtree so one ACL pattern confines the box."""
    return f"{device_root(device)}/res/{check_device_id(requester)}"


def controller_state_topic(controller: str) -> str:
    return f"{PREFIX}/ctl/{check_device_id(controller)}/$state"


# Who writes what under `tiepdan/v1/d/<dev>/`. A box publishes only to BOX_PUBLISHES and
# subscribes only to BOX_SUBSCRIBES; everything else in its subtree is written by the controller.
# Provisioning turns these into the broker's per-device ACL, so a new topic kind must be added
# here, with its direction in its name: `call/<call>/up` box -> bridge, `call/<call>/down`
# bridge -> box; `jobs/notify` controller -> box, `jobs/<job>/update` box -> controller.
BOX_PUBLISHES: Final = (
    "$state", "$birth", "tele/+", "evt/+", "state/reported", "res/+",
    "call/+/up", "jobs/+/update", "uploads/+",
)
BOX_SUBSCRIBES: Final = (
    "$state", "cmd/+", "state/desired", "call/+/down", "jobs/notify",
)
# Outside its own subtree a box may only read the controllers' presence.
BOX_READS_SHARED: Final = (f"{PREFIX}/ctl/+/$state",)
# The only device topics whose messages are retained; a retained message anywhere else is
# against the contract (Mosquitto cannot refuse it per topic: the controller clears it).
RETAINED: Final = ("$state", "$birth", "state/desired", "state/reported", "jobs/notify")


def retained_in_contract(topic: Topic) -> bool:
    """May a message on this device topic be retained?"""
    levels = (topic.kind, *topic.rest)
    for pattern in RETAINED:
        wanted = pattern.split("/")
        if len(wanted) == len(levels) and all(w in ("+", got) for w, got in zip(
                wanted, levels, strict=True)):
            return True
    return False


def device_filter(device: str = "+", suffix: str = "#") -> str:
    """A subscription filter over one device's subtree (or every device's with '+')."""
    if device != "+":
        check_device_id(device)
    return f"{PREFIX}/d/{device}/{suffix}"


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ProtocolError(f"invalid topic name segment {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed device topic: `tiepdan/v1/d/<device>/<kind>[/<rest>]`."""

    device: str
    kind: str  # "$state", "$birth", "tele", "evt", "state", "cmd", "res", "call", "jobs", ...
    rest: tuple[str, ...]

    @property
    def leaf(self) -> str:
        return self.rest[0] if self.rest else ""


def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "tiepdan" or parts[1] != VERSION or parts[2] != "d":
        raise ProtocolError(f"not a {PREFIX} device topic: {topic[:120]!r}")
    device = parts[3]
    if not is_device_id(device):
        raise ProtocolError(f"invalid device id in topic: {topic[:120]!r}")
    if any(not p for p in parts[4:]):
        raise ProtocolError(f"empty topic level: {topic[:120]!r}")
    return Topic(device=device, kind=parts[4], rest=tuple(parts[5:]))


def check_response_topic(device: str, topic: str) -> None:
    """Refuse a response topic outside the device's own `res/` subtree (see ACL design)."""
    prefix = f"{device_root(device)}/res/"
    rest = topic[len(prefix):] if topic.startswith(prefix) else ""
    if not rest or "/" in rest or "+" in rest or "#" in rest:
        raise ProtocolError(f"response topic {topic[:120]!r} is outside {prefix}")


# -- payloads -----------------------------------------------------------------------------------


class Point(msgspec.Struct, frozen=True):
    """Who a box serves: the reception point as the law names it."""

    kind: Literal["central", "province", "commune"]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    province: Annotated[str, msgspec.Meta(max_length=16)] = ""
    commune: Annotated[str, msgspec.Meta(max_length=16)] = ""


DeviceStateName = Literal["init", "ready", "disconnected", "lost"]


class DeviceState(msgspec.Struct, frozen=True):
    """Retained on `$state`; the Last Will carries `lost` with the same `seq` as the birth."""

    state: DeviceStateName
    seq: Seq
    ts: Millis


class Birth(msgspec.Struct, frozen=True):
    seq: Seq
    ts: Millis
    firmware: ShortText
    board: ShortText
    boot_id: ShortText
    point: Point
    keepalive: Annotated[int, msgspec.Meta(ge=1, le=3600)]
    capabilities: Annotated[list[Name], msgspec.Meta(max_length=64)] = []
    clock_synced: bool | None = None


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    """Periodic health on `tele/health` (QoS 0, message expiry)."""

    ts: Millis
    uptime_s: Annotated[float, msgspec.Meta(ge=0)]
    cpu_percent: Annotated[float, msgspec.Meta(ge=0, le=100 * 64)]
    mem_percent: Annotated[float, msgspec.Meta(ge=0, le=100)]
    disk_free_bytes: Annotated[int, msgspec.Meta(ge=0)]
    disk_total_bytes: Annotated[int, msgspec.Meta(ge=0)]
    load1: Annotated[float, msgspec.Meta(ge=0)]
    outbox: Annotated[int, msgspec.Meta(ge=0)] = 0
    cpu_temp_c: float | None = None
    throttled: Annotated[int, msgspec.Meta(ge=0)] | None = None
    under_voltage: bool | None = None
    clock_synced: bool | None = None
    # Age of the oldest recording segment the box holds without the archive's receipt.
    recording_backlog_s: Annotated[float, msgspec.Meta(ge=0)] | None = None


ButtonName = Literal["call", "mute", "end"]
BUTTON_NAMES: Final = get_args(ButtonName)


def is_button(name: str) -> TypeGuard[ButtonName]:
    """The wire's button names; `board.profile.BUTTONS` wires the same three (a test checks)."""
    return name in BUTTON_NAMES


class ButtonEvent(msgspec.Struct, frozen=True, tag="button", tag_field="kind"):
    button: ButtonName
    action: Literal["press", "hold"] = "press"


class AlarmEvent(msgspec.Struct, frozen=True, tag="alarm", tag_field="kind"):
    code: Name
    severity: Literal["info", "warning", "critical"]
    message: ShortText
    active: bool = True


RecordingAlarmCode = Literal["disk_low", "disk_full", "no_recipients", "recorder_failed"]


class RecordingAlarm(msgspec.Struct, frozen=True, tag="recording", tag_field="kind"):
    """The box's recording is at risk or has stopped (issue 4), on `evt/recording`.

    `disk_low`: not enough space for `max_session_minutes`, recording anyway (warning);
    `disk_full`: recording stopped cleanly because the disk filled, what was sealed is kept;
    `no_recipients`: no valid signed recipient list, so nothing is recorded (never plaintext);
    `recorder_failed`: any other fault that stopped the recorder. `active=False` clears it.
    """

    code: RecordingAlarmCode
    severity: Literal["info", "warning", "critical"]
    message: ShortText
    session: Name | None = None
    segments: Annotated[int, msgspec.Meta(ge=0)] = 0  # sealed in this session so far
    free_mb: Annotated[int, msgspec.Meta(ge=0)] | None = None
    active: bool = True


EventData = ButtonEvent | AlarmEvent | RecordingAlarm


class Event(msgspec.Struct, frozen=True):
    """QoS 1 on `evt/<kind>`; `id` lets the controller drop the duplicates QoS 1 allows."""

    id: MessageId
    ts: Millis
    data: EventData


def event_kind(data: EventData) -> str:
    if isinstance(data, ButtonEvent):
        return "button"
    return "recording" if isinstance(data, RecordingAlarm) else "alarm"


LogLevel = Literal["debug", "info", "warning", "error"]
Window = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d\Z")]
Tag = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}\Z")]


class NextSession(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next reception session a box takes part in, for the hall's idle screen."""

    at: Millis
    title: ShortText = ""
    host_name: ShortText = ""


class RemoteConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the controller may set on a box. `None` keeps the box's local setting."""

    telemetry_interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] | None = None
    log_level: LogLevel | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None
    maintenance_window: Window | None = None
    auto_join: bool | None = None
    # The hall's screen and sounds (issue 11).
    language: Literal["vi", "en"] | None = None
    volume: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    office_hours: Window | None = None
    next_session: NextSession | None = None
    # Issue 12: where recordings go, if the archive moves after enrollment set it.
    archive_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+\Z",
                                             max_length=500)] | None = None


class Desired(msgspec.Struct, frozen=True):
    """Retained on `state/desired`, written only by the controller (AWS-shadow style)."""

    version: Annotated[int, msgspec.Meta(ge=1)]
    ts: Millis
    config: RemoteConfig


class Reported(msgspec.Struct, frozen=True, omit_defaults=True):
    """Retained on `state/reported`: the desired version the box processed and what it runs."""

    version: Annotated[int, msgspec.Meta(ge=0)]
    ts: Millis
    config: RemoteConfig
    error: ShortText | None = None


class Command(msgspec.Struct, frozen=True):
    """On `cmd/<name>`, with MQTT 5 response topic, correlation data and message expiry."""

    id: MessageId
    ts: Millis
    args: dict[str, Any] = {}


ErrorCode = Literal[
    "bad_request", "unknown_command", "forbidden", "busy", "timeout", "expired", "internal",
    "not_found", "conflict", "unavailable",
]
ERROR_CODES: Final = frozenset(get_args(ErrorCode))


class ErrorInfo(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: Annotated[str, msgspec.Meta(max_length=1000)]


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    id: MessageId
    ok: bool
    ts: Millis
    result: Any = None
    error: ErrorInfo | None = None


class ControllerState(msgspec.Struct, frozen=True):
    state: Literal["online", "offline", "lost"]
    ts: Millis


# Command arguments, one struct per command that takes any.


class CollectLogsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[int, msgspec.Meta(ge=1, le=2000)] = 200


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


# -- encoding -----------------------------------------------------------------------------------

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder[Any]] = {}


def encode(message: object) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes, kind: type[T]) -> T:
    """Decode and validate; every failure is a ProtocolError with the offending path."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(payload)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid {kind.__name__}: {exc}") from None


def convert(value: object, kind: type[T]) -> T:
    """Validate already-decoded JSON (command args) against a struct."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid {kind.__name__}: {exc}") from None


def to_builtins(message: object) -> Any:
    return msgspec.to_builtins(message)


def error_response(request_id: str, code: ErrorCode, message: str) -> Response:
    return Response(
        id=request_id, ok=False, ts=now_ms(), error=ErrorInfo(code=code, message=message[:1000])
    )


# -- sessions and calls (issue 3) ---------------------------------------------------------------
# The controller invites a box with `cmd/session-invite` (and may order `session-join` or
# `session-leave`); the box joins by publishing an offer on `call/<call>/up`, where `<call>` is
# the id the invitation gave this box for this session. Everything else about the call travels
# on the same two topics: box -> bridge on `up`, bridge -> box on `down`, QoS 1 with a message
# expiry so a stale offer or answer is never delivered to a peer that has moved on. aiortc is
# half-trickle: an SDP carries every candidate and `a=end-of-candidates`. `attempt` counts the
# box's peer connections within one call (a rejoin is a new attempt); a message for another
# attempt is stale. Call quality goes out as telemetry on `tele/call`.

SIGNAL_EXPIRY: Final = 30  # seconds an offer, answer or bye stays deliverable
MAX_SDP: Final = 64 * 1024

CallId = Name
Attempt = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Sdp = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SDP)]
PointRole = Literal["host", "guest"]
CallStateName = Literal["idle", "invited", "joining", "live", "reconnecting"]
# How a point's media is split into peer connections. "single": one connection to the built-in
# bridge carries everything. "split" (the Janus backend, an SFU): the point offers a "publish"
# leg (its camera, sent only) and an "audio" leg (microphone out, mix-minus in), and answers the
# bridge's offer of a "view" leg (the composed picture, received only).
MediaPlan = Literal["single", "split"]
Leg = Literal["main", "publish", "audio", "view"]


def call_topic(device: str, call: str, direction: Literal["up", "down"]) -> str:
    return f"{device_root(device)}/call/{_name(call)}/{direction}"


class IceServer(msgspec.Struct, frozen=True):
    """A STUN or TURN server for the point's ICE (`turn:host:3478?transport=udp`)."""

    urls: Annotated[list[Annotated[str, msgspec.Meta(max_length=300)]],
                    msgspec.Meta(min_length=1, max_length=8)]
    username: Annotated[str, msgspec.Meta(max_length=300)] = ""
    credential: Annotated[str, msgspec.Meta(max_length=300)] = ""


class SessionInvite(msgspec.Struct, frozen=True):
    """Arguments of `session-invite`: which session, this box's call id in it, who chairs it."""

    session: Name
    call: CallId
    role: PointRole
    host: DeviceId
    host_name: ShortText
    expires: Millis  # the box stops ringing at this time (epoch ms)
    title: ShortText = ""
    auto_join: bool = False
    # The last attempt the controller saw from this box in this call: a box that restarted
    # numbers its next offers above it, so they are not taken for stale ones.
    attempt: Attempt = 0
    plan: MediaPlan = "single"
    # TURN (and STUN) servers with time-limited credentials for this point in this session.
    ice_servers: Annotated[list[IceServer], msgspec.Meta(max_length=4)] = []


class SessionRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Arguments of `session-join` and `session-leave`."""

    session: Name
    reason: Name = "command"


class CallOffer(msgspec.Struct, frozen=True, tag="offer", tag_field="type"):
    """Box -> bridge for the legs the box offers; bridge -> box for the "view" leg."""

    session: Name
    attempt: Attempt
    sdp: Sdp
    ts: Millis
    leg: Leg = "main"


class CallAnswer(msgspec.Struct, frozen=True, tag="answer", tag_field="type"):
    session: Name
    attempt: Attempt
    sdp: Sdp
    ts: Millis
    leg: Leg = "main"


class CallBye(msgspec.Struct, frozen=True, tag="bye", tag_field="type"):
    """Either side leaves; `reason` says why (button, command, ended, removed, timeout, ...)."""

    session: Name
    attempt: Attempt
    reason: Name
    ts: Millis


class CallDecline(msgspec.Struct, frozen=True, tag="decline", tag_field="type"):
    """The officer pressed End while the box was ringing."""

    session: Name
    ts: Millis


class CallReport(msgspec.Struct, frozen=True, tag="report", tag_field="type"):
    """The box's own view of the call, sent on every change: the controller's registry shows it."""

    session: Name
    attempt: Attempt
    state: CallStateName
    muted: bool
    ts: Millis
    error: ShortText | None = None


class CallRefused(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    """The bridge refuses an offer (unknown or ended session, stale attempt, bad SDP, ...)."""

    session: Name
    attempt: Attempt
    code: ErrorCode
    message: Annotated[str, msgspec.Meta(max_length=1000)]
    ts: Millis


class KeyframeRequest(msgspec.Struct, frozen=True, tag="keyframe", tag_field="type"):
    """The bridge cannot decode this box's video: send a key frame (RTCP PLI can be lost)."""

    session: Name
    attempt: Attempt
    ts: Millis


Pixels = Annotated[int, msgspec.Meta(ge=0, le=8192)]


class Tile(msgspec.Struct, frozen=True):
    device: DeviceId
    name: ShortText
    x: Pixels
    y: Pixels
    width: Pixels
    height: Pixels


class CallLayout(msgspec.Struct, frozen=True, tag="layout", tag_field="type"):
    """Where each point sits in the composed picture, sent whenever it changes."""

    session: Name
    width: Pixels
    height: Pixels
    tiles: Annotated[list[Tile], msgspec.Meta(max_length=64)]
    ts: Millis
    speaker: DeviceId | None = None


CallUp = CallOffer | CallAnswer | CallBye | CallDecline | CallReport
CallDown = CallAnswer | CallOffer | CallBye | CallRefused | KeyframeRequest | CallLayout

_call_up = msgspec.json.Decoder(CallUp)
_call_down = msgspec.json.Decoder(CallDown)


def decode_call_up(payload: bytes) -> CallUp:
    return _decode_with(_call_up, payload, "call message (up)")  # type: ignore[no-any-return]


def decode_call_down(payload: bytes) -> CallDown:
    return _decode_with(_call_down, payload, "call message (down)")  # type: ignore[no-any-return]


def _decode_with(decoder: msgspec.json.Decoder[Any], payload: bytes, what: str) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid {what}: {exc}") from None


Rate = Annotated[float, msgspec.Meta(ge=0)]


class CallQos(msgspec.Struct, frozen=True, omit_defaults=True):
    """What aiortc's getStats() (plus the frame counters it lacks) says about one call."""

    fps_sent: Rate = 0.0
    fps_received: Rate = 0.0
    kbps_sent: Rate = 0.0
    kbps_received: Rate = 0.0
    rtt_ms: Rate | None = None
    loss_sent: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    loss_received: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    jitter_ms: Rate | None = None
    # What the sender's encoder is asked for now (adaptive bitrate follows the link): target
    # bit rate and picture (a box's camera; the bridge's stats leave them out).
    target_kbps: Rate | None = None
    video_width: Annotated[int, msgspec.Meta(ge=0, le=8192)] | None = None
    video_height: Annotated[int, msgspec.Meta(ge=0, le=8192)] | None = None
    video_fps: Annotated[int, msgspec.Meta(ge=0, le=240)] | None = None


class CallTelemetry(msgspec.Struct, frozen=True, omit_defaults=True):
    """Periodic on `tele/call` (QoS 0, message expiry) while the box is in a session."""

    ts: Millis
    session: Name
    call: CallId
    state: CallStateName
    muted: bool
    qos: CallQos | None = None


# -- HTTP: the archive (recording, issue 4) -----------------------------------------------------
# Bytes go over HTTP, not MQTT. A box reads the recipients document, then for each of its
# recordings sends manifest records (NDJSON), resumes each segment from the offset HEAD reports and
# collects the archive's signed receipts. Every refusal carries its machine-readable code in
# ERROR_HEADER (a HEAD answer has no body) and, with a body, as {"error": {"code", "message"}}.

ERROR_HEADER: Final = "Tiepdan-Error"
ARCHIVE_RECIPIENTS_PATH: Final = "/archive/v1/recipients"
ARCHIVE_RECORDING_PATH: Final = "/archive/v1/recordings/{session}/{recorder}"
ARCHIVE_RECORDS_PATH: Final = ARCHIVE_RECORDING_PATH + "/records"
ARCHIVE_SEGMENT_PATH: Final = ARCHIVE_RECORDING_PATH + "/segments/{name}"
ARCHIVE_RECEIPTS_PATH: Final = ARCHIVE_RECORDING_PATH + "/receipts"
UPLOAD_OFFSET_HEADER: Final = "Upload-Offset"
UPLOAD_LENGTH_HEADER: Final = "Upload-Length"
SEGMENT_STORED_HEADER: Final = "Segment-Stored"


def archive_recording_path(session: str, recorder: str) -> str:
    """The recording's base path; both ids are checked, so nothing else can reach the URL."""
    return ARCHIVE_RECORDING_PATH.format(session=check_device_id(session),
                                         recorder=check_device_id(recorder))


# -- enrollment (provisioning, issue 6) ----------------------------------------------------------
# Not MQTT: a box that has no certificate yet POSTs this JSON over HTTPS to the controller's
# enrollment endpoint (the URL and the CA to check it come from the SD card). Every field is
# checked strictly; the answer is an EnrollResponse (200) or {"error": EnrollRefusal}.

ENROLL_PATH: Final = "/v1/enroll"
# base64 of a raw 32-byte Ed25519 public key
SignKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\Z")]


# base64 of a 64-byte Ed25519 signature (\Z: no trailing newline); empty only in requests from
# firmware older than issue 15, which the controller refuses
SignProof = Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9+/]{86}==)?\Z")]


class EnrollRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device: DeviceId
    commune: Annotated[str, msgspec.Meta(max_length=16)]
    token: Annotated[str, msgspec.Meta(min_length=16, max_length=128)]
    csr: Annotated[str, msgspec.Meta(max_length=8192)]
    sign_key: SignKey
    # Proof of possession: the signing key's signature over `enroll_challenge(...)`.
    sign_proof: SignProof = ""


ENROLL_PROOF_CONTEXT: Final = b"tiepdan enroll proof of possession v1"


def enroll_challenge(device: str, token: str, csr: str, sign_key: str) -> bytes:
    """What the box signs with its Ed25519 key at enrollment: bound to this claim token and
    this CSR, so a signature made for one enrollment proves nothing for another. Each field is
    length-prefixed (no two field lists give the same bytes) and domain-separated."""
    parts = [ENROLL_PROOF_CONTEXT, device.encode(), token.encode(), csr.encode(),
             sign_key.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class EnrollResponse(msgspec.Struct, frozen=True):
    device: DeviceId
    certificate: str
    ca: str
    controller_sign_key: SignKey
    # Issue 12: the rest of what a box needs, so that nothing is edited by hand after first boot.
    # Where it uploads recordings (and fetches whom to seal them to), the TUF repository it
    # updates from, and that repository's first root metadata (JSON), which the box checks
    # against the hash pinned on its SD card at provisioning. Empty: not configured centrally.
    archive_url: Annotated[str, msgspec.Meta(max_length=500)] = ""
    ota_repository: Annotated[str, msgspec.Meta(max_length=500)] = ""
    ota_trusted_root: Annotated[str, msgspec.Meta(max_length=256 * 1024)] = ""


# Renewal (issue 15): an enrolled box POSTs a CSR for its own key over mutual TLS, with the
# certificate it holds; it gets a new certificate (a RenewResponse) or {"error": EnrollRefusal}.
RENEW_PATH: Final = "/v1/renew"


class RenewRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    csr: Annotated[str, msgspec.Meta(max_length=8192)]


class RenewResponse(msgspec.Struct, frozen=True):
    device: DeviceId
    certificate: str
    ca: str


class EnrollRefusal(msgspec.Struct, frozen=True):
    code: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z_]{0,31}\Z")]
    message: Annotated[str, msgspec.Meta(max_length=1000)]


# -- OTA jobs (issue 5) -------------------------------------------------------------------------
# AWS IoT Jobs vocabulary. The controller keeps one retained `jobs/notify` per box naming the job
# the box should run (an empty payload, or `job: null`, withdraws it); the box reports each step
# on `jobs/<job>/update`. What to install is only a hint here: the box trusts nothing but the
# TUF-signed metadata it fetches itself (see ota/).

JobId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,31}\Z")]
JobStatus = Literal["queued", "in_progress", "succeeded", "failed", "rejected", "rolled_back"]
JobStep = Literal["waiting", "downloading", "downloaded", "installing", "restarting",
                  "health_check"]
TERMINAL_JOB_STATUSES: Final = frozenset({"succeeded", "failed", "rejected", "rolled_back"})
TargetPath = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")]


class JobDocument(msgspec.Struct, frozen=True):
    job: JobId
    target: TargetPath  # a target path in the TUF repository
    version: ShortText  # what the campaign expects; the signed metadata decides
    repository: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=500)]
    download_delay_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0.0
    window: Window | None = None  # the campaign's window, for boxes without their own


class JobNotify(msgspec.Struct, frozen=True):
    """Retained on `jobs/notify`, written only by the controller."""

    ts: Millis
    job: JobDocument | None = None


class JobUpdate(msgspec.Struct, frozen=True, omit_defaults=True):
    """On `jobs/<job>/update`; `seq` grows per job so the controller keeps the latest."""

    job: JobId
    status: JobStatus
    ts: Millis
    seq: Annotated[int, msgspec.Meta(ge=0)]
    running: ShortText  # the firmware version running when this was sent
    step: JobStep | None = None
    progress: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


def job_notify_topic(device: str) -> str:
    return f"{device_root(device)}/jobs/notify"


def job_update_topic(device: str, job: str) -> str:
    return f"{device_root(device)}/jobs/{_name(job)}/update"
