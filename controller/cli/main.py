"""The central admin's command line: run the controller, list and inspect boxes, command them.

Every subcommand but `run` talks to the running controller's admin API (address and token from
the same configuration file), so there is one MQTT identity for the controller, not one per CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tiepdan import __version__
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.cli.fleet_table import fleet_table
from tiepdan.controller.config import ControllerConfig, config_path, load_config
from tiepdan.errors import TiepdanError
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError

log = logging.getLogger("tiepdan.controller")


def _run(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    from tiepdan.controller.service import Controller

    logs.setup(config.log.level, config.log.format)

    async def run() -> None:
        try:
            controller = Controller(config)
        except ConfigError as exc:
            log.error("config_invalid %s", exc)
            raise SystemExit(2) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.request_stop)
        await controller.run()

    asyncio.run(run())
    return 0


def _devices(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    devices = ApiClient.from_config(config).get("/api/devices")
    if args.json:
        console.print_json(data=devices)
    else:
        console.print(fleet_table(devices, title=f"controller {config.controller.id}",
                                  width=console.width))
    return 0


def _show(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    console.print_json(data=ApiClient.from_config(config).get(f"/api/devices/{args.device}"))
    return 0


def _events(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    query = {"limit": str(args.limit)}
    if args.device:
        query["device"] = args.device
    console.print_json(data=ApiClient.from_config(config).get("/api/events", **query))
    return 0


def _pairs(items: list[str]) -> dict[str, Any]:
    """`key=value` arguments; values are JSON when they parse as JSON, strings otherwise."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ApiError(0, "bad_request", f"expected key=value, got {item!r}")
        try:
            result[key] = json.loads(raw)
        except ValueError:
            result[key] = raw
    return result


def _cmd(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    client = ApiClient.from_config(config)
    response = client.call("POST", f"/api/devices/{args.device}/commands/{args.name}",
                           body=_pairs(args.args), query={"timeout": str(args.timeout)},
                           timeout=args.timeout + 10)
    console.print_json(data=response)
    return 0 if response.get("ok") else 1


def _set_config(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    client = ApiClient.from_config(config)
    document = client.call("PUT", f"/api/devices/{args.device}/desired", body=_pairs(args.pairs))
    console.print(f"desired version {document['version']} written for {args.device}")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        reported = client.get(f"/api/devices/{args.device}").get("reported") or {}
        if reported.get("version", 0) >= document["version"]:
            if reported.get("error"):
                console.print(f"[red]refused by the box:[/red] {reported['error']}")
                return 1
            console.print_json(data=reported)
            return 0
        time.sleep(0.2)
    console.print(f"[yellow]not reported within {args.wait:g}s; the box applies it when it "
                  "is next online[/yellow]")
    return 0 if args.wait == 0 else 1


def _session(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    from tiepdan.controller.cli.sessions import session_command

    return session_command(ApiClient.from_config(config), args, console)


def _user(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    from tiepdan.controller.cli.users import user_command

    return user_command(config, args, console)
def _backup(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    from tiepdan.controller.backup.backup import backup

    header = backup(config, args.out, args.recipient)
    console.print_json(data=header)
    return 0


def _restore(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    from tiepdan.controller.backup.backup import restore

    console.print_json(data=restore(config, args.file, args.identity, args.signer,
                                    replace=args.replace))
    return 0


def _copy_database(config: ControllerConfig, args: argparse.Namespace,
                   console: Console) -> int:
    """The controller's database, and into PostgreSQL the archive index too (`archive.db`,
    which follows `database.url` there)."""
    from tiepdan.controller.connection import is_postgresql, redacted
    from tiepdan.controller.migrations.transfer import copy_rows, open_database

    def place(given: str) -> Path | str:
        return given if is_postgresql(given) else Path(given)

    pairs: list[tuple[str, Path | str]] = [
        ("controller", place(args.source) if args.source else config.controller_db)]
    archive = (Path(config.archive.dir) if config.archive.dir
               else config.data_dir / "archive") / "archive.db"
    if is_postgresql(args.target) and not args.source and not config.database.url \
            and archive.exists():
        pairs.append(("archive", archive))
    shown = redacted(args.target) if is_postgresql(args.target) else args.target
    for label, source_place in pairs:
        source = open_database(source_place, label)
        try:
            target = open_database(place(args.target), label)
            try:
                counts = copy_rows(source, target, label=label)
            finally:
                target.close()
        finally:
            source.close()
        console.print(f"{label}: copied {sum(counts.values())} rows of {len(counts)} tables "
                      f"into {shown}")
    return 0


COMMANDS = {
    "run": _run,
    "devices": _devices,
    "show": _show,
    "events": _events,
    "cmd": _cmd,
    "set-config": _set_config,
    "session": _session,
    "user": _user,
    "backup": _backup,
    "restore": _restore,
    "copy-database": _copy_database,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiepdan-controller", description=__doc__)
    p.add_argument("--config", type=Path, default=None,
                   help="controller configuration (TOML); default /etc/tiepdan/controller.toml "
                        "or $TIEPDAN_CONTROLLER_CONFIG")
    p.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the controller service")
    d = sub.add_parser("devices", help="list every box with its presence and health")
    d.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="one box in full, with its recent events")
    s.add_argument("device")
    e = sub.add_parser("events", help="recent events (button presses, alarms)")
    e.add_argument("--device")
    e.add_argument("--limit", type=int, default=50)
    c = sub.add_parser("cmd", help="send a command to a box and print its response")
    c.add_argument("device")
    c.add_argument("name", help="ping, get-status, restart-agent, collect-logs, ...")
    c.add_argument("args", nargs="*", metavar="key=value")
    c.add_argument("--timeout", type=float, default=10.0)
    sc = sub.add_parser("set-config", help="change a box's desired configuration")
    sc.add_argument("device")
    sc.add_argument("pairs", nargs="+", metavar="key=value",
                    help="telemetry_interval, log_level, tags, maintenance_window, auto_join")
    sc.add_argument("--wait", type=float, default=15.0,
                    help="seconds to wait for the box to report (0: do not wait)")
    b = sub.add_parser("backup", help="write an encrypted, signed backup of the central side")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--recipient", action="append", default=[], metavar="AGE1...",
                   help="age X25519 recipient (repeat for several); keep the identity offline")
    r = sub.add_parser("restore", help="restore a backup onto this (fresh) machine")
    r.add_argument("file", type=Path)
    r.add_argument("--identity", type=Path, required=True, help="age identity file")
    r.add_argument("--signer", required=True,
                   help="the controller's public key (base64), as `backup` printed it and "
                        "every box pins it (identity/controller.pub)")
    r.add_argument("--replace", action="store_true",
                   help="overwrite an existing controller database")
    cd = sub.add_parser("copy-database",
                        help="copy every row of the controller's database into an empty one "
                             "(e.g. from SQLite to PostgreSQL); stop the controller first")
    cd.add_argument("target", help="a postgresql:// URL or a SQLite file to create")
    cd.add_argument("--from", dest="source", default="",
                    help="the database to copy (default: the configured one)")
    from tiepdan.controller.cli.sessions import add_session_parser

    add_session_parser(sub)
    from tiepdan.controller.cli.users import add_user_parser

    add_user_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    logs.setup()
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("config_invalid %s", exc)
        return 2
    try:
        return COMMANDS[args.command](config, args, console)
    except (ApiError, TiepdanError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
