"""The archive: sessions and their recordings, the verification report, and MP4 export.

Export is for archivists only and is audited. The archive's age identity is meant to live
offline, so the archivist pastes it into the export form; it is used in memory for that one
export and never stored (not even the demo's on-controller identity is used by itself).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import pyrage
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tiepdan.controller.archive.export import ExportError, export_recording, report_path
from tiepdan.controller.archive.verification import (
    VerificationError,
    key_lookup,
    load_identities,
    verify_session,
)
from tiepdan.controller.console.context import audit, caller, controller, form, gettext, page
from tiepdan.controller.http.access import allow
from tiepdan.firmware.evidence.manifest import KeyLookup

VIEW = ("admin", "archivist", "technician")
SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _session_id(request: web.Request) -> str:
    session = request.match_info["session"]
    if not SESSION.fullmatch(session):
        raise web.HTTPNotFound(text="no such session")
    return session


def _trust(request: web.Request) -> tuple[KeyLookup, Ed25519PublicKey]:
    c = controller(request)
    key = Ed25519PublicKey.from_public_bytes(c.signing.public_raw())
    identities = load_identities(c.config.controller_db)
    return key_lookup(identities, controller_recorder=c.archive.recorder_id,
                      controller_key=key), key


@allow(*VIEW)
async def archive_page(request: web.Request) -> web.Response:
    sessions = await asyncio.to_thread(controller(request).archive.sessions)
    return page(request, "archive.html", sessions=sessions)


@allow(*VIEW)
async def session_page(request: web.Request) -> web.Response:
    session = _session_id(request)
    c = controller(request)
    recordings = await asyncio.to_thread(c.archive.recordings, session)
    if not recordings:
        raise web.HTTPNotFound(text="no recordings for this session")
    closed = await asyncio.to_thread(c.archive.closed, session)
    return page(request, "archive_session.html", session=session, recordings=recordings,
                closed=closed, report=None, error="",
                may_export=request_may(request, "archive.export"))


def request_may(request: web.Request, action: str) -> bool:
    return caller(request).may(action)


@allow(*VIEW)
async def verify(request: web.Request) -> web.Response:
    _ = gettext(request)
    session = _session_id(request)
    c = controller(request)
    recordings = await asyncio.to_thread(c.archive.recordings, session)
    if not recordings:
        raise web.HTTPNotFound(text="no recordings for this session")

    def run() -> dict[str, Any]:
        key_for, key = _trust(request)
        return verify_session(c.archive.dir, session, key_for=key_for, controller_key=key,
                              archive_id=c.id).to_json()

    try:
        report = await asyncio.to_thread(run)
    except VerificationError as exc:
        report, error = None, _("Could not verify: %(reason)s") % {"reason": str(exc)}
    else:
        error = ""
    audit(request, "archive.verify", session, ok=bool(report and report["ok"]))
    closed = await asyncio.to_thread(c.archive.closed, session)
    return page(request, "archive_session.html", session=session, recordings=recordings,
                closed=closed, report=report, error=error,
                may_export=request_may(request, "archive.export"))


def _identities(text: str) -> list[pyrage.x25519.Identity]:
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise ValueError("no identity")
    return [pyrage.x25519.Identity.from_str(line) for line in lines]


@allow("admin", "archivist")
async def export(request: web.Request) -> web.StreamResponse:
    _ = gettext(request)
    session, recorder = _session_id(request), request.match_info["recorder"]
    c = controller(request)
    recordings = await asyncio.to_thread(c.archive.recordings, session)
    if recorder not in {r["recorder"] for r in recordings}:
        raise web.HTTPNotFound(text="no such recording")
    data = await form(request)
    closed = await asyncio.to_thread(c.archive.closed, session)

    def refuse(status: int, message: str) -> web.Response:
        return page(request, "archive_session.html", status=status, session=session,
                    recordings=recordings, closed=closed, report=None, error=message,
                    may_export=True)

    try:
        identities = _identities(data.get("identity", ""))
    except (ValueError, pyrage.IdentityError):
        return refuse(400, _("Paste the archive's age identity (a line AGE-SECRET-KEY-1…)."))
    exports = c.config.data_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = exports / f"{session}-{recorder}-{secrets.token_hex(4)}.mp4"

    def run() -> dict[str, Any]:
        key_for, key = _trust(request)
        return export_recording(c.archive.dir, session, recorder, out=out,
                                identities=identities, key_for=key_for, controller_key=key,
                                archive_id=c.id, allow_gaps=data.get("allow_gaps") == "on"
                                ).export

    try:
        summary = await asyncio.to_thread(run)
    except (ExportError, VerificationError) as exc:
        out.unlink(missing_ok=True)
        report_path(out).unlink(missing_ok=True)
        audit(request, "archive.export_refused", f"{session}/{recorder}", reason=str(exc))
        return refuse(409, _("Export refused: %(reason)s") % {"reason": str(exc)})
    audit(request, "archive.export", f"{session}/{recorder}",
          segments=len(summary.get("segments", [])), gaps=summary.get("gaps", []))
    response = web.StreamResponse(headers={
        "Content-Type": "video/mp4",
        "Content-Disposition": f'attachment; filename="{session}-{recorder}.mp4"',
        "Cache-Control": "no-store"})
    response.content_length = out.stat().st_size
    await response.prepare(request)
    try:
        with out.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await response.write(chunk)
    finally:
        out.unlink(missing_ok=True)
        report_path(out).unlink(missing_ok=True)
    await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get("/archive", archive_page),
        web.get("/archive/{session}", session_page),
        web.get("/archive/{session}/verify", verify),
        web.post("/archive/{session}/{recorder}/export", export),
    ]
