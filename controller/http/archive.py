"""HTTP routes of the archive: the boxes' upload endpoints and the archivist's admin API.

On the box-facing HTTPS listener (`controller.http.boxes`), for the box whose TLS client
certificate names the recorder; a box can neither read nor write another box's recording:

    GET  /archive/v1/recipients                                   signed recipients document
    GET  /archive/v1/recordings/<session>/<recorder>              {"next_seq": n}
    POST /archive/v1/recordings/<session>/<recorder>/records      NDJSON manifest lines
    HEAD /archive/v1/recordings/<session>/<recorder>/segments/<name>   Upload-Offset header
    PUT  /archive/v1/recordings/<session>/<recorder>/segments/<name>   bytes from an offset
    GET  /archive/v1/recordings/<session>/<recorder>/receipts[?name=]  {"receipts": [...]}

A segment's upload lock belongs to its box: a new PUT from that box for the same segment cuts
the one in progress (a connection the hall's network left hanging) instead of being told it is
busy, and a body that stalls for `[boxes] read_timeout` is cut, its bytes kept.

On the admin listener (role admin): `/api/archive/sessions[/<session>[/close]]` and the same
`next_seq` and receipts under `/api/archive/recordings/<session>/<recorder>`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from tiepdan.controller.archive.closed import ClosedSession
from tiepdan.controller.archive.store import Archive
from tiepdan.controller.archive.upload import Upload
from tiepdan.controller.http.access import allow, box_of
from tiepdan.controller.http.app import CONTROLLER_KEY
from tiepdan.errors import BadInput, Forbidden, NotFound, TiepdanError, TimedOut, TooLarge
from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.receipt import Receipt

if TYPE_CHECKING:
    from tiepdan.controller.service import Controller

log = logging.getLogger(__name__)

PREFIX = protocol.ARCHIVE_RECORDING_PATH
MAX_RECORDS_BODY = 8 * 1024 * 1024
FLUSH = 1024 * 1024
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)\Z")

UploadKey = tuple[str, str, str]
HOLDERS: web.AppKey[dict[UploadKey, asyncio.Task[Any]]] = web.AppKey("archive_holders", dict)


def attach(admin: web.Application, boxes: web.Application) -> None:
    """The archive's routes: uploads on the box listener, the archivist's on the admin one."""
    boxes[HOLDERS] = {}
    boxes.add_routes([
        web.get(protocol.ARCHIVE_RECIPIENTS_PATH, recipients),
        web.get(PREFIX, recording),
        web.post(PREFIX + "/records", records),
        web.head(PREFIX + "/segments/{name}", head_segment),
        web.put(PREFIX + "/segments/{name}", put_segment),
        web.get(PREFIX + "/receipts", receipts),
    ])
    admin.add_routes([
        web.get("/api/archive/sessions", list_sessions),
        web.get("/api/archive/sessions/{session}", show_session),
        web.post("/api/archive/sessions/{session}/close", close_session),
        web.get("/api/archive/recordings/{session}/{recorder}", recording),
        web.get("/api/archive/recordings/{session}/{recorder}/receipts", receipts),
    ])


def _controller(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]


def _archive(request: web.Request) -> Archive:
    return _controller(request).archive


def _ids(request: web.Request) -> tuple[str, str]:
    """(session, recorder); on the box listener a box may only name itself as the recorder."""
    session, recorder = request.match_info["session"], request.match_info["recorder"]
    if request.path.startswith("/archive/"):
        box = box_of(request)
        if box != recorder:
            raise Forbidden(code="not_your_recording",
                            message=f"{box} may not use the recording of {recorder}")
    return session, recorder


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status,
                        content_type="application/json")


@allow("box")
async def recipients(request: web.Request) -> web.Response:
    return web.Response(body=_archive(request).recipients_document,
                        content_type="application/json")


@allow("box", "admin")
async def recording(request: web.Request) -> web.Response:
    archive = _archive(request)
    session, recorder = _ids(request)
    await asyncio.to_thread(archive.check_recording, session, recorder)
    return _json({"next_seq": await asyncio.to_thread(archive.next_seq, session, recorder)})


@allow("box")
async def records(request: web.Request) -> web.Response:
    archive = _archive(request)
    session, recorder = _ids(request)
    if request.content_length is not None and request.content_length > MAX_RECORDS_BODY:
        raise TooLarge(code="too_large", message=f"at most {MAX_RECORDS_BODY} bytes of records "
                                             "per request")
    body = await request.content.read(MAX_RECORDS_BODY + 1)
    if len(body) > MAX_RECORDS_BODY:
        raise TooLarge(code="too_large", message=f"at most {MAX_RECORDS_BODY} bytes of records "
                                             "per request")
    result = await asyncio.to_thread(archive.ingest_records, session, recorder,
                                     body.split(b"\n"))
    return _json({"accepted": result.accepted, "duplicates": result.duplicates,
                  "next_seq": result.next_seq})


@allow("box")
async def head_segment(request: web.Request) -> web.Response:
    archive = _archive(request)
    session, recorder = _ids(request)
    state = await asyncio.to_thread(archive.segment_state, session, recorder,
                                    request.match_info["name"])
    return web.Response(headers={protocol.UPLOAD_OFFSET_HEADER: str(state.offset),
                                 protocol.UPLOAD_LENGTH_HEADER: str(state.ct_size),
                                 protocol.SEGMENT_STORED_HEADER: "yes" if state.stored else "no"})


def _offset(request: web.Request) -> int:
    ranged = request.headers.get("Content-Range")
    if ranged:
        match = CONTENT_RANGE.fullmatch(ranged.strip())
        if match is None:
            raise BadInput(code="bad_request", message=f"Content-Range {ranged[:80]!r} is not "
                                                   "'bytes START-END/TOTAL'")
        return int(match.group(1))
    try:
        return int(request.query.get("offset", "0"))
    except ValueError:
        raise BadInput(code="bad_request", message="offset must be an integer") from None


@allow("box")
async def put_segment(request: web.Request) -> web.Response:
    archive = _archive(request)
    session, recorder = _ids(request)
    name = request.match_info["name"]
    key = (session, recorder, name)
    await _take_over(request, key)
    opened = await asyncio.to_thread(archive.open_upload, session, recorder, name,
                                     _offset(request), request.content_length)
    if isinstance(opened, Receipt):
        return web.Response(body=opened.line(), content_type="application/json")
    log.info("archive_upload session=%s recorder=%s name=%s offset=%d", session, recorder,
             name, opened.offset)
    holders = request.app[HOLDERS]
    task = asyncio.current_task()
    assert task is not None
    holders[key] = task
    try:
        receipt = await _receive(request, opened)
    finally:
        if holders.get(key) is task:
            del holders[key]
    if receipt is None:
        return _json({"offset": opened.offset, "ct_size": opened.ct_size}, status=202)
    return web.Response(body=receipt.line(), content_type="application/json")


async def _take_over(request: web.Request, key: UploadKey) -> None:
    """The lock is the box's: its new PUT cuts its own older one (a hung connection)."""
    holder = request.app[HOLDERS].get(key)
    if holder is None or holder.done():
        return
    log.warning("archive_upload_taken_over session=%s recorder=%s name=%s", *key)
    holder.cancel()
    await asyncio.wait([holder], timeout=10)


async def _receive(request: web.Request, upload: Upload) -> Receipt | None:
    """Copy the body into the upload; bytes that arrived before a cut stay in the `.part`.

    A body that sends nothing for `[boxes] read_timeout` seconds is cut like a dropped one.
    """
    read_timeout = _controller(request).config.boxes.read_timeout
    buffer = bytearray()
    try:
        try:
            while True:
                try:
                    async with asyncio.timeout(read_timeout):
                        chunk = await request.content.readany()
                except TimeoutError:
                    raise TimedOut(code="read_timeout",
                                   message=f"no bytes for {read_timeout:g} s; the upload was "
                                           "cut and resumes from what arrived") from None
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) >= FLUSH:
                    data, buffer = bytes(buffer), bytearray()
                    await asyncio.to_thread(upload.write, data)
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.CancelledError,
                TiepdanError) as exc:
            log.info("archive_upload_cut name=%s offset=%d error=%r", upload.row["name"],
                     upload.offset + len(buffer), exc)
            if buffer:
                await asyncio.to_thread(upload.write, bytes(buffer))
            raise
        if buffer:
            await asyncio.to_thread(upload.write, bytes(buffer))
        return await asyncio.to_thread(upload.finish)
    finally:
        upload.close()


@allow("box", "admin")
async def receipts(request: web.Request) -> web.Response:
    archive = _archive(request)
    session, recorder = _ids(request)
    found = await asyncio.to_thread(archive.receipts, session, recorder,
                                    request.query.get("name"))
    return _json({"receipts": found})


@allow("admin")
async def list_sessions(request: web.Request) -> web.Response:
    return _json({"sessions": await asyncio.to_thread(_archive(request).sessions)})


@allow("admin")
async def show_session(request: web.Request) -> web.Response:
    c = _controller(request)
    session = request.match_info["session"]
    recordings = await asyncio.to_thread(c.archive.recordings, session)
    known = c.sessions.get(session)
    if known is None and not recordings:
        raise NotFound(f"no session {session!r}")
    closed = await asyncio.to_thread(c.archive.closed, session)
    return _json({"session": session, "state": None if known is None else known.state,
                  "recordings": recordings, "closed": closed,
                  "problems": c.closer.problems.get(session, [])})


@allow("admin")
async def close_session(request: web.Request) -> web.Response:
    c = _controller(request)
    session = request.match_info["session"]
    result = await c.closer.close(session, closed_by="admin")
    if isinstance(result, ClosedSession):
        return _json({"closed": result})
    return _json({"error": {"code": "conflict", "message": "session cannot close yet"},
                  "problems": result.items}, status=409)
