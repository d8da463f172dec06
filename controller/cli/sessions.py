"""`tiepdan-controller session ...`: open, list, show and end reception sessions."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table

from tiepdan.controller.cli.client import ApiClient

STATE_STYLE = {"scheduled": "cyan", "inviting": "yellow", "live": "green", "ended": "dim",
               "closed": "blue"}


def add_session_parser(sub: Any) -> None:
    s = sub.add_parser("session", help="reception sessions: open, list, show, end")
    ss = s.add_subparsers(dest="session_command", required=True)
    o = ss.add_parser("open", help="open a session now, at a time, or on a recurring schedule")
    o.add_argument("--host", required=True, help="the chairing point's device id")
    o.add_argument("--invite", required=True, help="comma-separated device ids to invite")
    o.add_argument("--title", default="")
    when = o.add_mutually_exclusive_group()
    when.add_argument("--at", help="start time, ISO 8601 (province time unless an offset "
                                   "is given)")
    when.add_argument("--every", help="recurring: 'THU 08:00', 'MON,THU 14:30', "
                                      "'DAILY 08:00' or an RRULE")
    o.add_argument("--auto-join", action="store_true",
                   help="boxes join by themselves instead of waiting for Call")
    lst = ss.add_parser("list", help="sessions and recurring schedules")
    lst.add_argument("--state", choices=["scheduled", "inviting", "live", "ended",
                                              "closed"])
    lst.add_argument("--json", action="store_true")
    sh = ss.add_parser("show", help="one session: points, layout, log, bridge QoS")
    sh.add_argument("session")
    e = ss.add_parser("end", help="end a session for every point (or skip a scheduled one)")
    e.add_argument("session")
    u = ss.add_parser("unschedule", help="stop a recurring schedule")
    u.add_argument("schedule")


def session_command(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    command = args.session_command
    if command == "open":
        body: dict[str, Any] = {
            "host": args.host, "invite": [d.strip() for d in args.invite.split(",") if d.strip()],
            "title": args.title, "auto_join": args.auto_join,
        }
        if args.at:
            body["at"] = args.at
        if args.every:
            body["every"] = args.every
        result = client.call("POST", "/api/sessions", body=body)
        session = result["session"]
        if "schedule" in result:
            console.print(f"schedule {result['schedule']['id']} ({args.every}); next session "
                          f"{session['id']} at {_when(session['starts_at'])}")
        else:
            console.print(f"session {session['id']} {session['state']}")
        return 0
    if command == "list":
        query = {"state": args.state} if args.state else {}
        listing = client.get("/api/sessions", **query)
        if args.json:
            console.print_json(data=listing)
        else:
            console.print(sessions_table(listing["sessions"]))
            if listing["schedules"]:
                console.print(schedules_table(listing["schedules"]))
        return 0
    if command == "show":
        console.print_json(data=client.get(f"/api/sessions/{args.session}"))
        return 0
    if command == "end":
        ended = client.call("POST", f"/api/sessions/{args.session}/end")["session"]
        console.print(f"session {ended['id']} {ended['state']} ({ended['end_reason']})")
        return 0
    cancelled = client.call("DELETE", f"/api/schedules/{args.schedule}")["schedule"]
    console.print(f"schedule {cancelled['id']} stopped")
    return 0


def sessions_table(sessions: list[dict[str, Any]]) -> Table:
    table = Table(title=f"sessions: {len(sessions)}", title_justify="left")
    for column in ("session", "state", "host", "points", "starts", "title"):
        table.add_column(column, no_wrap=column != "title")
    for s in sessions:
        points = s.get("points", [])
        live = sum(1 for p in points if p["state"] == "live")
        table.add_row(s["id"], f"[{STATE_STYLE.get(s['state'], '')}]{s['state']}",
                      s["host"], f"{live}/{len(points)} live",
                      _when(s["starts_at"] or s["created"]), s["title"] or "-")
    return table


def schedules_table(schedules: list[dict[str, Any]]) -> Table:
    table = Table(title="schedules", title_justify="left")
    for column in ("schedule", "every", "host", "invite", "next", "active"):
        table.add_column(column)
    for s in schedules:
        table.add_row(s["id"], f"{s['every']} ({s['timezone']})", s["host"],
                      ",".join(s["invite"]), s["next_session"] or "-",
                      "yes" if s["active"] else "no")
    return table


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M %Z")
