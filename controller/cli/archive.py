"""The archivist's command line: list, verify and export archived recordings; make the age key.

It reads the archive directory and the controller's database directly (read-only), so it works
beside a running controller and on a copy of the archive alike. Exit status: 0 all good,
1 something did not verify (or the export was refused), 2 bad input (missing archive, unknown
session, unreadable identity or key).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tiepdan import __version__
from tiepdan.controller.archive.export import ExportError, export_recording, report_path
from tiepdan.controller.archive.verification import (
    SEGMENT_SUFFIX,
    VerificationError,
    key_lookup,
    load_identities,
    session_dir,
    verify_session,
)
from tiepdan.controller.config import ControllerConfig, config_path, load_config
from tiepdan.controller.connection import is_postgresql
from tiepdan.errors import BadInput
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError
from tiepdan.firmware.evidence.manifest import FILENAME, KeyLookup, ManifestError, parse_line

log = logging.getLogger("tiepdan.controller.archive.store")


class CliError(BadInput):
    """Bad input: printed as one line, exit status 2."""


# --- inputs -----------------------------------------------------------------------------------


def read_identities(path: Path) -> list[pyrage.x25519.Identity]:
    """An age identity file (as `age-keygen` or `keygen` writes it): AGE-SECRET-KEY-1... lines."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read identity file {path}: {exc}") from None
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise CliError(f"identity file {path} line {number}: not an age X25519 identity "
                           f"(AGE-SECRET-KEY-1...)") from None
    if not found:
        raise CliError(f"identity file {path} holds no age identity")
    return found


def controller_key(config: ControllerConfig, given: Path | None) -> Ed25519PublicKey:
    """The controller's public key: a given file (base64 raw, as boxes hold it) or its own key."""
    if given is not None:
        try:
            return Ed25519PublicKey.from_public_bytes(
                base64.b64decode(given.read_bytes().strip(), validate=True))
        except (OSError, binascii.Error, ValueError) as exc:
            raise CliError(f"cannot read controller public key {given}: {exc}") from None
    path = config.data_dir / "signing.key"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CliError(f"no controller key at {path}; pass --controller-pub") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read controller key {path}: {exc}; pass --controller-pub") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"controller key {path} is not an Ed25519 key")
    return key.public_key()


class Context:
    def __init__(self, config: ControllerConfig, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self.archive_dir = Path(args.archive) if args.archive else (
            Path(config.archive.dir) if config.archive.dir else config.data_dir / "archive")
        if not (self.archive_dir / "recordings").is_dir():
            raise CliError(f"no archive at {self.archive_dir} (no recordings/ directory)")

    @property
    def controller_recorder(self) -> str:
        return f"controller-{self.config.controller.id}"

    def trust(self) -> tuple[KeyLookup, Ed25519PublicKey]:
        key = controller_key(self.config, self.args.controller_pub)
        db: Path | str = self.config.controller_db
        if self.args.db:
            db = self.args.db if is_postgresql(self.args.db) else Path(self.args.db)
        try:
            identities = load_identities(db)
        except VerificationError as exc:
            raise CliError(str(exc)) from None
        return key_lookup(identities, controller_recorder=self.controller_recorder,
                          controller_key=key), key


# --- commands ---------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{out} exists; not overwriting an identity") from None
    except OSError as exc:
        raise CliError(f"cannot create {out}: {exc}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    log.info("archive_identity_created path=%s recipient=%s", out, recipient)
    console.print(f"identity written to {out} (mode 0600); keep it offline and backed up.\n"
                  "put this recipient in controller.toml [archive] recipients:",
                  markup=False, highlight=False)
    console.print(recipient, highlight=False, soft_wrap=True)
    return 0


def _list(ctx: Context, console: Console) -> int:
    rows: list[dict[str, Any]] = []
    for session in sorted(p.name for p in (ctx.archive_dir / "recordings").iterdir()
                          if p.is_dir()):
        base = ctx.archive_dir / "recordings" / session
        recorders = sorted(p.name for p in base.iterdir() if p.is_dir())
        files = [f for r in recorders for f in (base / r).iterdir()
                 if f.name.endswith(SEGMENT_SUFFIX)]
        started = _started(base, recorders)
        rows.append({
            "session": session, "recorders": recorders, "segments": len(files),
            "bytes": sum(f.stat().st_size for f in files), "started_utc_ms": started,
            "closed": (ctx.archive_dir / "closed" / f"{session}.json").exists()})
    if ctx.args.json:
        console.print_json(data=rows)
        return 0
    table = Table(title=f"archive {ctx.archive_dir}: {len(rows)} sessions", title_justify="left")
    for column in ("session", "started (UTC)", "recorders", "segments", "bytes", "closed"):
        table.add_column(column)
    for row in rows:
        when = "-" if row["started_utc_ms"] is None else time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(row["started_utc_ms"] / 1000))
        table.add_row(Text(row["session"]), when, Text(", ".join(row["recorders"]) or "-"),
                      str(row["segments"]), f"{row['bytes']:,}", "yes" if row["closed"] else "no")
    console.print(table)
    return 0


def _started(base: Path, recorders: list[str]) -> int | None:
    times = []
    for recorder in recorders:
        with contextlib.suppress(OSError, ManifestError), open(base / recorder / FILENAME,
                                                                  "rb") as handle:
            times.append(parse_line(handle.readline().rstrip(b"\n")).utc_ms)
    return min(times) if times else None


def _verify(ctx: Context, console: Console) -> int:
    identities = read_identities(Path(ctx.args.identity)) if ctx.args.identity else []
    key_for, key = ctx.trust()
    try:
        report = verify_session(ctx.archive_dir, ctx.args.session, key_for=key_for,
                                controller_key=key, archive_id=ctx.config.controller.id,
                                identities=identities)
    except VerificationError as exc:
        raise CliError(str(exc)) from None
    if ctx.args.json:
        console.print_json(data=report.to_json())
    else:
        console.print(report.table())
        if not identities:
            console.print("plaintexts not checked: pass --identity to decrypt every segment",
                          style="yellow")
    return 0 if report.ok else 1


def _export(ctx: Context, console: Console) -> int:
    identities = read_identities(Path(ctx.args.identity))
    key_for, key = ctx.trust()
    out = Path(ctx.args.out)
    try:
        if not (session_dir(ctx.archive_dir, ctx.args.session) / ctx.args.recorder).is_dir():
            raise CliError(f"no recording by {ctx.args.recorder!r} in session "
                           f"{ctx.args.session!r}")
        report = export_recording(
            ctx.archive_dir, ctx.args.session, ctx.args.recorder, out=out,
            identities=identities, key_for=key_for, controller_key=key,
            archive_id=ctx.config.controller.id, allow_gaps=ctx.args.allow_gaps)
    except VerificationError as exc:
        raise CliError(str(exc)) from None
    except ExportError as exc:
        if ctx.args.json:
            console.print_json(data=exc.report.to_json())
        else:
            console.print(exc.report.table())
        console.print(Text.assemble(("export refused: ", "red"), str(exc)), soft_wrap=True)
        return 1
    if ctx.args.json:
        console.print_json(data=report.to_json())
    else:
        console.print(report.table())
        summary = report.export
        console.print(f"exported {len(summary['segments'])} segments, "
                      f"{summary['duration_ms'] / 1000:.1f} s, to {out}; report "
                      f"{report_path(out)}", markup=False, highlight=False, soft_wrap=True)
        if summary["gaps"]:
            console.print(f"gaps (left out): {', '.join(summary['gaps'])}", style="yellow",
                          markup=False)
    return 0 if report.ok else 1


COMMANDS: dict[str, Callable[[Context, Console], int]] = {
    "list": _list, "verify": _verify, "export": _export}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiepdan-archive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="controller configuration (TOML) naming the data and archive "
                        "directories; default /etc/tiepdan/controller.toml or "
                        "$TIEPDAN_CONTROLLER_CONFIG")
    p.add_argument("--archive", help="archive directory (default: [archive] dir, or "
                                     "<data dir>/archive)")
    p.add_argument("--db", help="controller database with the boxes' keys "
                                "(default <data dir>/controller.db)")
    p.add_argument("--controller-pub", type=Path, default=None,
                   help="the controller's public key (base64 raw Ed25519, as in a box's "
                        "controller.pub); default: derived from <data dir>/signing.key")
    p.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="create the archive's age identity; prints its recipient")
    k.add_argument("--out", required=True, help="identity file to create (mode 0600)")
    ls = sub.add_parser("list", help="sessions and recordings in the archive")
    ls.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="verify every recording of a session (exit 0 only if all "
                                      "verifies)")
    v.add_argument("session")
    v.add_argument("--identity", help="age identity file: also decrypt and check plaintexts")
    v.add_argument("--json", action="store_true")
    e = sub.add_parser("export", help="one recording to a playable MP4 + verification report")
    e.add_argument("session")
    e.add_argument("--recorder", required=True, help="box id, or controller-<id> for the bridge")
    e.add_argument("--identity", required=True, help="age identity file")
    e.add_argument("--out", required=True, help="MP4 to write")
    e.add_argument("--allow-gaps", action="store_true",
                   help="export the segments that verify, list the rest as gaps")
    e.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    logs.setup("warning")
    try:
        if args.command == "keygen":
            return _keygen(args, console)
        path = config_path(args.config)
        try:
            config = load_config(path) if path.exists() or args.config else ControllerConfig()
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        return COMMANDS[args.command](Context(config, args), console)
    except CliError as exc:
        console.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
