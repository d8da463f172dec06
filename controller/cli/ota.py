r"""`tiepdan-ota`: the update admin's command line.

Keys and the repository are files (root keys on offline media, `--root-keys`); campaigns go
through the running controller's admin API, so every action lands in its audit log.

    tiepdan-ota keys init --root-keys /media/usb1 --root-keys /media/usb2 \
        --root-count 3 --root-threshold 2
    tiepdan-ota build --version 1.2.0
    tiepdan-ota publish dist/tiepdan-1.2.0.tar
    tiepdan-ota campaign start tiepdan-1.2.0.tar --waves 1,10,50,100 --failure-threshold 5
    tiepdan-ota campaign status --watch
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from tiepdan import __version__
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.config import ControllerConfig, config_path, load_config
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError
from tiepdan.ota.bundle import BOX_PARTS, BundleError, build_bundle, build_wheel, read_bundle
from tiepdan.ota.keys import KeyFileError
from tiepdan.ota.repository import Keyring, RepositoryError, UpdateRepository

log = logging.getLogger("tiepdan.ota")

STATE_STYLE = {"succeeded": "green", "failed": "red", "rolled_back": "red", "rejected": "red",
               "in_progress": "cyan", "queued": "yellow", "notified": "yellow",
               "withdrawn": "dim", "pending": "dim", "running": "cyan", "completed": "green",
               "halted": "bold red", "paused": "yellow"}
BOX_STATES = ("pending", "notified", "queued", "in_progress", "succeeded", "failed",
              "rolled_back", "rejected", "withdrawn")


def _controller_config(args: argparse.Namespace) -> ControllerConfig:
    path = config_path(args.config)
    if args.config is None and not path.exists():
        return ControllerConfig()
    return load_config(path)


def _repo_path(args: argparse.Namespace) -> Path:
    if args.repo:
        return Path(args.repo)
    config = _controller_config(args)
    return Path(config.ota.repository or config.data_dir / "ota" / "repository")


def _keys_path(args: argparse.Namespace) -> Path:
    if args.keys:
        return Path(args.keys)
    config = _controller_config(args)
    return Path(config.ota.keys or config.data_dir / "ota" / "keys")


def _root_dirs(args: argparse.Namespace) -> list[Path]:
    return [Path(p) for p in args.root_keys] or [_keys_path(args) / "root"]


def _repository(args: argparse.Namespace) -> UpdateRepository:
    keyring = Keyring.from_dirs(_keys_path(args), _root_dirs(args),
                                os.environ.get("TIEPDAN_OTA_PASSPHRASE", "").encode() or None)
    return UpdateRepository(_repo_path(args), keyring)


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or f"{getpass.getuser()}@{socket.gethostname()}")


# -- keys, bundles, repository -------------------------------------------------------------------


def _keys_init(args: argparse.Namespace, console: Console) -> int:
    repo = UpdateRepository(_repo_path(args))
    repo.initialise(_keys_path(args), _root_dirs(args), root_keys=args.root_count,
                    root_threshold=args.root_threshold, targets_keys=args.targets_count,
                    targets_threshold=args.targets_threshold)
    root = repo.root()
    console.print(f"[green]repository initialised[/green] at {repo.path}")
    for role, spec in root.roles.items():
        console.print(f"  {role:<9} {spec.threshold} of {len(spec.keyids)} key(s)")
    console.print(f"root keys written to: {', '.join(str(p) for p in _root_dirs(args))} "
                  "[bold]- move them offline now[/bold]")
    console.print(f"give boxes {repo.metadata_dir / '1.root.json'} as ota.trusted_root")
    return 0


def _keys_rotate(args: argparse.Namespace, console: Console) -> int:
    repo = _repository(args)
    new = repo.rotate(args.role, _keys_path(args), _root_dirs(args), count=args.count,
                      threshold=args.threshold)
    console.print(f"[green]{args.role} keys rotated[/green]: {', '.join(k[:12] for k in new)}; "
                  f"root is now version {repo.root().version}")
    return 0


def _build(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    if not args.wheel and not args.version:
        raise ValueError("build needs --version (or --wheel)")
    dependencies = sorted(Path(args.wheels).glob("*.whl")) if args.wheels else []
    if dependencies and args.target == "any":
        raise ValueError("--wheels needs --target (the platform the wheels are for)")
    with console.status(f"building tiepdan {args.version or ''} ..."):
        # A box's bundle carries only what a box runs (board, firmware, ota).
        wheel = Path(args.wheel) if args.wheel else build_wheel(Path(args.source), args.version,
                                                                out, BOX_PARTS)
        bundle = build_bundle(wheel, out, dependencies, target=args.target)
    manifest, _ = read_bundle(bundle)
    console.print(f"[green]bundle[/green] {bundle} ({bundle.stat().st_size:,} bytes, "
                  f"version {manifest.version}, {len(manifest.dependencies)} dependency "
                  f"wheel(s) for {manifest.target})")
    if not dependencies:
        console.print("[yellow]no dependency wheels: only a box whose slot runs on its "
                      "interpreter's packages accepts this bundle; for the fleet build the "
                      "artifact (python -m tiepdan.tools.packaging.artifact)[/yellow]")
    return 0


def _sign(args: argparse.Namespace, console: Console) -> int:
    repo = _repository(args)
    with repo.locked():
        with repo.edit(args.role):
            pass
        if args.role in ("targets", "snapshot"):
            repo.do_snapshot(force=args.role == "snapshot")
        if args.role != "root":
            repo.do_timestamp(force=True)
    md = repo.open(args.role)
    console.print(f"[green]{args.role} v{md.signed.version} signed[/green], expires "
                  f"{md.signed.expires:%Y-%m-%d %H:%M} UTC")
    return 0


def _publish(args: argparse.Namespace, console: Console) -> int:
    repo = _repository(args)
    bundle = Path(args.bundle)
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), DownloadColumn(),
                  console=console) as progress:
        tasks: dict[str, Any] = {}

        def report(step: str, done: int, total: int) -> None:
            if step not in tasks:
                label = {"copy": f"copy {bundle.name}", "targets": "sign targets",
                         "snapshot": "sign snapshot", "timestamp": "sign timestamp"}[step]
                tasks[step] = progress.add_task(label, total=total)
            progress.update(tasks[step], completed=done, total=total)

        target = repo.add_bundle(bundle, downgrade=args.allow_downgrade, progress=report)
    console.print(f"[green]published[/green] {target.path} ({target.length:,} bytes, sha256 "
                  f"{target.hashes['sha256'][:16]}...)"
                  + (" [bold yellow]with a signed downgrade permission[/bold yellow]"
                     if args.allow_downgrade else ""))
    return 0


def _targets(args: argparse.Namespace, console: Console) -> int:
    table = Table(title=f"targets in {_repo_path(args)}", title_justify="left")
    for column in ("target", "version", "bytes", "sha256", "downgrade"):
        table.add_column(column)
    for t in UpdateRepository(_repo_path(args)).targets_list():
        table.add_row(t["path"], str(t.get("version")), f"{t['length']:,}",
                      str(t["sha256"])[:16], "yes" if t.get("downgrade") else "")
    console.print(table)
    return 0


def _trusted_root(args: argparse.Namespace, console: Console) -> int:
    data = UpdateRepository(_repo_path(args)).trusted_root()
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0



# -- campaigns -----------------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> ApiClient:
    return ApiClient.from_config(_controller_config(args))


def _waves(args: argparse.Namespace) -> list[dict[str, Any]]:
    waves = []
    for item in args.waves.split(","):
        parts = item.strip().rstrip("%").split(":")
        wave: dict[str, Any] = {"percent": float(parts[0]),
                                "max_failure_percent": args.failure_threshold,
                                "min_finished": args.min_finished}
        if len(parts) > 1:
            wave["max_failure_percent"] = float(parts[1])
        if len(parts) > 2:
            wave["min_finished"] = int(parts[2])
        waves.append(wave)
    return waves


def _campaign_start(args: argparse.Namespace, console: Console) -> int:
    version = args.version or args.target.removeprefix("tiepdan-").removesuffix(".tar")
    selector: dict[str, Any] = {}
    if args.province:
        selector["province"] = args.province
    if args.commune:
        selector["communes"] = args.commune
    if args.tag:
        selector["tag"] = args.tag
    if args.from_version:
        selector["version"] = args.from_version
    if args.device:
        selector["devices"] = args.device
    spec: dict[str, Any] = {
        "target": args.target, "version": version, "selector": selector,
        "waves": _waves(args), "max_concurrent": args.max_concurrent,
        "notify_rate": args.notify_rate, "download_jitter": args.jitter, "name": args.name,
    }
    if args.window:
        spec["window"] = args.window
    created = _api(args).call("POST", "/api/ota/campaigns", body={
        "spec": spec, "actor": _actor(args), "approved_by": args.approved_by or ""})
    console.print(f"[green]campaign {created['id']} started[/green]: {args.target} to "
                  f"{sum(w['boxes'] for w in created['waves'])} boxes")
    if args.watch:
        return _watch(args, console, created["id"])
    return 0


def _campaign_table(summary: dict[str, Any], boxes: bool) -> Group:
    state = summary["state"]
    title = Text.assemble(f"campaign {summary['id']} ", (state, STATE_STYLE.get(state, "")),
                          f"  {summary['spec']['target']}  wave {summary['wave']}")
    if summary.get("reason"):
        title.append(f"  ({summary['reason']})", style="italic")
    waves = Table(title=title, title_justify="left")
    for column in ("wave", "share", "fail limit", "boxes", *BOX_STATES):
        waves.add_column(column, justify="right")
    for w in summary["waves"]:
        marker = ">" if w["wave"] == summary["wave"] else ""
        waves.add_row(f"{marker}{w['wave']}", f"{w['percent']:g} %",
                      f"{w['max_failure_percent']:g} % after {w['min_finished']}",
                      str(w["boxes"]), *(str(w["states"].get(s, "") or "") for s in BOX_STATES))
    parts: list[Any] = [waves]
    if boxes and summary.get("boxes"):
        table = Table(title="boxes", title_justify="left")
        for column in ("device", "wave", "state", "step", "progress", "running", "reason"):
            table.add_column(column, overflow="ellipsis", no_wrap=column != "reason")
        for b in summary["boxes"]:
            if b["state"] == "pending":
                continue
            progress = "" if b["progress"] is None else f"{b['progress']:.0f} %"
            table.add_row(b["device"], str(b["wave"]),
                          Text(b["state"], style=STATE_STYLE.get(b["state"], "")), b["step"],
                          progress, b["running"], b["reason"])
        parts.append(table)
    return Group(*parts)


def _campaign_status(args: argparse.Namespace, console: Console) -> int:
    api = _api(args)
    if args.id is None:
        campaigns = api.get("/api/ota/campaigns")
        if args.json:
            console.print_json(data=campaigns)
            return 0
        if not campaigns:
            console.print("no campaigns")
        for summary in campaigns:
            console.print(_campaign_table(summary, boxes=False))
        return 0
    if args.watch:
        return _watch(args, console, args.id)
    summary = api.get(f"/api/ota/campaigns/{args.id}")
    if args.json:
        console.print_json(data=summary)
    else:
        console.print(_campaign_table(summary, boxes=True))
    return 0


def _watch(args: argparse.Namespace, console: Console, campaign: str) -> int:
    """Live progress per wave and per box until the campaign stops running (or Ctrl-C)."""
    api = _api(args)
    summary = api.get(f"/api/ota/campaigns/{campaign}")
    try:
        with Live(_campaign_table(summary, True), console=console, refresh_per_second=2) as live:
            while summary["state"] == "running":
                time.sleep(1.0)
                summary = api.get(f"/api/ota/campaigns/{campaign}")
                live.update(_campaign_table(summary, True))
    except KeyboardInterrupt:
        pass
    return 0 if summary["state"] in ("running", "completed") else 1


def _campaign_action(args: argparse.Namespace, console: Console) -> int:
    summary = _api(args).call("POST", f"/api/ota/campaigns/{args.id}/{args.action}",
                              body={"actor": _actor(args), "reason": args.reason})
    console.print(_campaign_table(summary, boxes=False))
    return 0


def _audit(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="update audit log", title_justify="left")
    for column in ("when", "actor", "action", "campaign", "detail"):
        table.add_column(column)
    for a in _api(args).get("/api/ota/audit", limit=str(args.limit)):
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["ts"])), a["actor"],
                      a["action"], a["campaign"], a["detail"])
    console.print(table)
    return 0


def _history(args: argparse.Namespace, console: Console) -> int:
    table = Table(title=f"update history of {args.device}", title_justify="left")
    for column in ("when", "campaign", "status", "step", "running", "reason"):
        table.add_column(column)
    for h in _api(args).get("/api/ota/history", device=args.device, limit=str(args.limit)):
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["ts"])),
                      h["campaign"], Text(h["status"], style=STATE_STYLE.get(h["status"], "")),
                      h["step"], h["running"], h["reason"])
    console.print(table)
    return 0


# -- parser --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiepdan-ota", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="controller configuration, for the API and default paths")
    p.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def repo_args(q: argparse.ArgumentParser, keys: bool = True) -> None:
        q.add_argument("--repo", help="TUF repository folder (default: the controller's)")
        if keys:
            q.add_argument("--keys", help="keys folder with targets/ and online/ "
                                          "(default: the controller's)")
            q.add_argument("--root-keys", action="append", default=[], metavar="DIR",
                           help="folder with root keys (offline medium); repeat for several")

    keys = sub.add_parser("keys", help="create or rotate signing keys").add_subparsers(
        dest="keys_command", required=True)
    init = keys.add_parser("init", help="create every key and the first metadata")
    repo_args(init)
    init.add_argument("--root-count", type=int, default=1)
    init.add_argument("--root-threshold", type=int, default=1)
    init.add_argument("--targets-count", type=int, default=1)
    init.add_argument("--targets-threshold", type=int, default=1)
    init.set_defaults(func=_keys_init)
    rotate = keys.add_parser("rotate", help="replace the keys of a role")
    repo_args(rotate)
    rotate.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    rotate.add_argument("--count", type=int, default=1)
    rotate.add_argument("--threshold", type=int)
    rotate.set_defaults(func=_keys_rotate)

    build = sub.add_parser("build", help="build a bundle of the firmware at a version")
    build.add_argument("--version", dest="version", help="version to stamp (PEP 440)")
    build.add_argument("--source", default=".", help="source tree (default: .)")
    build.add_argument("--wheel", help="bundle this wheel instead of building one")
    build.add_argument("--out", default="dist")
    build.add_argument("--wheels", help="folder of dependency wheels to carry (pinned by hash)")
    build.add_argument("--target", default="any",
                       help="platform of those wheels, e.g. linux_aarch64 (default: any)")
    build.set_defaults(func=_build)

    sign = sub.add_parser("sign", help="re-sign a role (new version, fresh expiry)")
    repo_args(sign)
    sign.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    sign.set_defaults(func=_sign)

    publish = sub.add_parser("publish", help="sign a bundle into the repository")
    repo_args(publish)
    publish.add_argument("bundle")
    publish.add_argument("--allow-downgrade", action="store_true",
                         help="sign permission for newer boxes to install this older version")
    publish.set_defaults(func=_publish)

    targets = sub.add_parser("targets", help="list published bundles")
    repo_args(targets, keys=False)
    targets.set_defaults(func=_targets)
    trusted = sub.add_parser("trusted-root", help="the root metadata boxes are provisioned with")
    repo_args(trusted, keys=False)
    trusted.add_argument("--out")
    trusted.set_defaults(func=_trusted_root)

    campaign = sub.add_parser("campaign", help="start and follow update campaigns")
    csub = campaign.add_subparsers(dest="campaign_command", required=True)
    start = csub.add_parser("start", help="start a campaign")
    start.add_argument("target", help="published target, e.g. tiepdan-1.2.0.tar")
    start.add_argument("--version", dest="version", help="default: from the target name")
    start.add_argument("--waves", default="1,10,50,100",
                       help="cumulative %% per wave, each optionally PCT:FAIL%%:MIN_FINISHED")
    start.add_argument("--failure-threshold", type=float, default=10.0,
                       help="%% of finished boxes that may fail before the campaign halts")
    start.add_argument("--min-finished", type=int, default=1,
                       help="boxes of a wave that must finish before the threshold counts")
    start.add_argument("--province")
    start.add_argument("--commune", action="append")
    start.add_argument("--tag")
    start.add_argument("--from-version", help="only boxes running this version")
    start.add_argument("--device", action="append")
    start.add_argument("--max-concurrent", type=int, default=50,
                       help="boxes downloading at once")
    start.add_argument("--notify-rate", type=float, default=20.0, help="notifications per second")
    start.add_argument("--jitter", type=float, default=60.0,
                       help="random download delay per box, up to this many seconds")
    start.add_argument("--window", help="maintenance window HH:MM-HH:MM for boxes without one")
    start.add_argument("--name", default="")
    start.add_argument("--approved-by")
    start.add_argument("--actor")
    start.add_argument("--watch", action="store_true")
    start.set_defaults(func=_campaign_start)
    status = csub.add_parser("status", help="campaigns, or one campaign per wave and box")
    status.add_argument("id", nargs="?")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_campaign_status)
    for action, text in (("pause", "stop notifying new boxes"),
                         ("resume", "continue a paused or halted campaign"),
                         ("abort", "halt: withdraw pending notifications and alert")):
        a = csub.add_parser(action, help=text)
        a.add_argument("id")
        a.add_argument("--reason", default="")
        a.add_argument("--actor")
        a.set_defaults(func=_campaign_action, action=action)
    audit = csub.add_parser("audit", help="who approved, started, paused or aborted what")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(func=_audit)
    history = sub.add_parser("history", help="a box's update history")
    history.add_argument("device")
    history.add_argument("--limit", type=int, default=100)
    history.set_defaults(func=_history)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    logs.setup("warning")
    try:
        return int(args.func(args, console))
    except (ApiError, BundleError, RepositoryError, KeyFileError, ConfigError,
            ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
