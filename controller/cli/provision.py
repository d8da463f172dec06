"""`tiepdan-provision`: the technician's and the central admin's tool for box identities.

    tiepdan-provision ca init --host mqtt.tinh.example.gov.vn --root-key /media/usb/root.key
    tiepdan-provision ca rotate --root-key /media/usb/root.key
    tiepdan-provision new-box --commune 17980 --hall "UBND xã Hưng Nguyên" --boot /media/bootfs
    tiepdan-provision verify xa-17980-3fa2c1
    tiepdan-provision revoke xa-17980-3fa2c1 --reason "stolen 2025-06-30"
    tiepdan-provision list

`ca init` runs once on the central server, before the controller's first start; it writes the
root CA's key, encrypted with a passphrase (from --passphrase-file or asked for), to offline
media, and keeps only the issuing CA online. `ca rotate` brings the root key back to sign a new
issuing CA (every few years, or when the online key may have leaked). Every other command
talks to the running controller's admin API (address and token from the controller's
configuration), which keeps the claim tokens and does the signing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from tiepdan import __version__
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.config import ControllerConfig, config_path, load_config
from tiepdan.controller.enrollment.provisioning import broker_address, material_for
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError
from tiepdan.firmware.protocol.firstboot import Provision
from tiepdan.provisioning.boot import write_boot_folder
from tiepdan.provisioning.ca import CertificateAuthority, serial_hex
from tiepdan.provisioning.dynsec import DynsecError
from tiepdan.provisioning.label import Label, write_labels
from tiepdan.provisioning.material import initialise, rotate
from tiepdan.provisioning.mosquitto import listener_text


def _when(epoch: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime(fmt)


def _passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes:
    if args.passphrase_file:
        path: Path = args.passphrase_file
        lines = path.read_text().splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"{path} is empty")
        return lines[0].encode()
    first: str = getpass.getpass("root CA key passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ValueError("the passphrases differ")
    return first.encode()


def _ca_rotate(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    material = material_for(config)
    if not material.exists() or not material.root_cert.exists():
        console.print(f"[red]no two-tier CA in {material.dir}[/red] (`ca init --root-key` "
                      "makes one)")
        return 1
    root = CertificateAuthority.load(args.root_key, material.root_cert,
                                     _passphrase(args, confirm=False))
    old = material.authority()
    ca = rotate(material, root, controller=config.controller.id,
                cert_days=config.provisioning.server_cert_days)
    console.print(f"[green]new issuing CA[/green] {ca.cert.subject.rfc4514_string()} "
                  f"(serial {serial_hex(ca.cert)}); the old one ({serial_hex(old.cert)}) is "
                  f"kept in {material.previous_dir} to sign CRLs until its certificates "
                  "expire.\nNow restart the controller: it rewrites the CRLs and reloads the "
                  "broker. Boxes renew into the new CA by themselves.")
    return 0


def _ca_init(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    material = material_for(config)
    if material.exists() and not args.force:
        console.print(f"[red]a provisioning CA already exists in {material.dir}[/red]\n"
                      "Replacing it cuts off every enrolled box; use --force only for that.")
        return 1
    host, port = broker_address(config)
    hosts = args.host or [host, "localhost", "127.0.0.1"]
    p = config.provisioning
    if args.root_key.exists():
        console.print(f"[red]{args.root_key} already exists[/red]: a root key is never "
                      "overwritten; choose another path")
        return 1
    passphrase = _passphrase(args, confirm=True)
    initialise(material, controller=config.controller.id, hosts=hosts, broker_port=port,
               listen_host=args.listen_host, cert_days=p.server_cert_days, crl_days=p.crl_days,
               debug_log=args.broker_debug_log, root_key=args.root_key, passphrase=passphrase)
    console.print(f"[green]root CA key written, encrypted,[/green] to {args.root_key}: keep it "
                  "offline (and a second copy); it is needed only for `ca rotate`.")
    broker = material.broker
    console.print(f"[green]provisioning CA created[/green] in {material.dir} "
                  f"(key mode 0600), valid for {', '.join(dict.fromkeys(hosts))}")
    table = Table(show_header=False, box=None)
    for what, path in [
        ("Mosquitto configuration", broker.conf), ("ACL (per-device pattern)", broker.acl),
        ("subscribe rules (dynamic-security plugin)", broker.dynsec),
        ("root CA certificate (its key: offline)", material.root_cert),
        ("CRL", broker.crl), ("broker certificate / key", f"{broker.cert} / {broker.key}"),
        ("controller client certificate", material.controller_cert),
        ("enrollment endpoint certificate", material.enroll_cert),
    ]:
        table.add_row(what, str(path))
    console.print(table)
    console.print(
        "Next: include the Mosquitto configuration (e.g. "
        f"`ln -s {broker.conf} /etc/mosquitto/conf.d/tiepdan.conf`), make the broker key "
        "readable by Mosquitto's user only (`chgrp mosquitto` and mode 0640), give "
        f"{broker.dynsec.name} to Mosquitto's user (its plugin rewrites it), restart "
        "Mosquitto once, then start the controller. Later changes (revocations, CRL renewal) "
        "are reloaded with `provisioning.broker_reload`, without a restart.")
    if not config.mqtt.tls:
        console.print("[yellow]warning: mqtt.tls is false in the controller's configuration; "
                      "the fleet listener accepts TLS only[/yellow]")
    return 0


@dataclass(frozen=True)
class NewBoxResult:
    device: str
    expires_at: float
    provision: Provision
    folder: Path
    labels: tuple[Path, Path]


def new_box(client: ApiClient, *, commune: str, hall: str, boot: Path, labels: Path,
            device: str | None = None, province: str = "", kind: str = "commune",
            days: float | None = None) -> NewBoxResult:
    """Claim a token from the controller, write the SD card's first-boot folder and the label.

    The token goes straight from the controller's answer onto the card; it is never shown."""
    body: dict[str, Any] = {"commune": commune, "hall": hall, "kind": kind,
                            "province": province}
    if device:
        body["device"] = device
    if days:
        body["days"] = days
    answer = client.call("POST", "/api/provisioning/boxes", body=body)
    provision = msgspec.convert(answer["provision"], Provision)
    folder = write_boot_folder(boot, provision, answer["ca"].encode(), answer["token"])
    files = write_labels(labels, Label(answer["device"], commune, hall, province))
    return NewBoxResult(answer["device"], answer["expires_at"], provision, folder, files)


def _new_box(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    boot = Path(args.boot)
    if not boot.is_dir():
        console.print(f"[red]{boot} is not a directory[/red]: mount the SD card's boot "
                      "partition and give its path with --boot")
        return 1
    result = new_box(ApiClient.from_config(config), commune=args.commune, hall=args.hall,
                     boot=boot, labels=Path(args.labels), device=args.device,
                     province=args.province, kind=args.kind, days=args.days)
    provision = result.provision
    table = Table(show_header=False, box=None, title=f"new box {result.device}")
    for key, value in [
        ("device id", result.device), ("hall", args.hall), ("commune", args.commune),
        ("first-boot folder", str(result.folder)), ("claim expires", _when(result.expires_at)),
        ("broker", f"{provision.broker.host}:{provision.broker.port}"),
        ("enrollment", provision.enroll_url), ("label", "  ".join(map(str, result.labels))),
    ]:
        table.add_row(key, value)
    console.print(table)
    console.print("Put the card in the box and power it on, then run "
                  f"`tiepdan-provision verify {result.device}`.")
    return 0


PROBLEMS: list[tuple[Callable[[dict[str, Any]], bool], str]] = [
    (lambda h: h.get("under_voltage") is True, "under-voltage: use the official power supply"),
    (lambda h: bool(h.get("throttled")), "the CPU has been throttled (heat or power)"),
    (lambda h: (h.get("cpu_temp_c") or 0) >= 80, "CPU above 80 °C: check ventilation"),
    (lambda h: h.get("clock_synced") is False, "the clock is not synchronised (NTP blocked?)"),
    (lambda h: h.get("disk_total_bytes", 0) > 0
     and h.get("disk_free_bytes", 0) / h["disk_total_bytes"] < 0.1, "less than 10 % disk free"),
]


def _verify(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    client = ApiClient.from_config(config)
    deadline = time.monotonic() + args.wait
    device: dict[str, Any] | None = None
    with console.status(f"waiting for {args.device} to come online (up to {args.wait:g}s)..."):
        while time.monotonic() < deadline:
            try:
                device = client.get(f"/api/devices/{args.device}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                device = None
            if device and device.get("online") and device.get("firmware"):
                break
            time.sleep(1.0)
        else:
            box = _provisioned(client, args.device)
            state = box["state"] if box else "not provisioned"
            console.print(f"[red]{args.device} did not come online within {args.wait:g}s[/red] "
                          f"(provisioning state: {state}). Check the network cable, the power "
                          "LED, and that the SD card was written for this box.")
            return 1
        status = client.call("POST", f"/api/devices/{args.device}/commands/get-status",
                             body={}, timeout=30)
    assert device is not None
    if not status.get("ok"):
        console.print(f"[red]{args.device} is online but did not answer:[/red] "
                      f"{status.get('error')}")
        return 1
    result = status["result"]
    health = result.get("health") or {}
    box = _provisioned(client, args.device)
    table = Table(show_header=False, title=f"{args.device}: online", title_style="bold green")
    rows = [
        ("point", f"{device.get('name')} ({device.get('kind')}, commune "
                  f"{device.get('commune') or '-'})"),
        ("firmware / board", f"{result.get('firmware')} / {result.get('board')}"),
        ("certificate", f"serial {box['cert_serial']}, expires {_when(box['cert_not_after'])}"
         if box and box.get("cert_serial") else "-"),
        ("uptime", f"{result.get('uptime_s', 0):.0f} s"),
        ("CPU / temperature", f"{health.get('cpu_percent', 0):.0f} % / "
                              f"{health.get('cpu_temp_c') or '-'} °C"),
        ("memory", f"{health.get('mem_percent', 0):.0f} %"),
        ("disk free", f"{health.get('disk_free_bytes', 0) / 2**30:.1f} GiB"),
        ("clock synchronised", _yes_no(health.get("clock_synced"))),
        ("LEDs", ", ".join(f"{k}={v}" for k, v in (result.get("leds") or {}).items())),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    problems = [text for check, text in PROBLEMS if check(health)]
    for text in problems:
        console.print(f"[yellow]warning:[/yellow] {text}")
    if problems:
        return 1
    console.print(f"[bold green]OK[/bold green]: {args.device} is enrolled, online over mutual "
                  "TLS and healthy. You can leave the hall.")
    return 0


def _yes_no(value: object) -> str:
    return "unknown" if value is None else "yes" if value else "NO"


def _provisioned(client: ApiClient, device: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.get(f"/api/provisioning/boxes/{device}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _revoke(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    result = ApiClient.from_config(config).call(
        "POST", f"/api/provisioning/boxes/{args.device}/revoke", body={"reason": args.reason},
        timeout=60)
    console.print(f"[bold]{args.device} revoked[/bold] at {_when(result['revoked_at'])} "
                  f"({result['reason']}); certificates {', '.join(result['serials']) or '-'}")
    console.print(f"broker refuses it: {'yes' if result['broker_refuses'] else '[red]NO[/red]'};"
                  f" live connection cut: {'yes' if result['evicted'] else '[red]NO[/red]'}; "
                  "recordings it signs from now on are not trusted.")
    return 0 if result["broker_refuses"] and result["evicted"] else 1


STATE_STYLE = {"enrolled": "green", "waiting": "yellow", "expired": "dim", "revoked": "red"}


def _list(config: ControllerConfig, args: argparse.Namespace, console: Console) -> int:
    boxes = ApiClient.from_config(config).get("/api/provisioning/boxes")
    if args.json:
        console.print_json(data=boxes)
        return 0
    table = Table(title=f"provisioned boxes ({len(boxes)})")
    for column in ("device", "commune", "hall", "state", "presence", "enrolled", "expires",
                   "serial"):
        table.add_column(column)
    for box in boxes:
        state = box["state"]
        table.add_row(box["device"], box["commune"], box["hall"],
                      f"[{STATE_STYLE.get(state, '')}]{state}[/]", box["presence"],
                      _when(box["enrolled_at"], "%Y-%m-%d"),
                      _when(box["cert_not_after"] if box["enrolled_at"] else box["token_expires"],
                            "%Y-%m-%d"),
                      (box["cert_serial"] or "-")[:12])
    console.print(table)
    return 0


def _broker_config(config: ControllerConfig, args: argparse.Namespace,
                   console: Console) -> int:
    """Rewrite tiepdan.conf from this version's provisioning (an upgrade: new limits, the
    subscribe-rules plugin), keeping the CA and every certificate."""
    material = material_for(config)
    if not material.exists():
        console.print("[red]no provisioning CA[/red]: run `ca init` first")
        return 1
    _, port = broker_address(config)
    material.broker.conf.write_text(listener_text(material.broker, port, args.listen_host,
                                                  debug_log=args.broker_debug_log))
    console.print(f"[green]written[/green] {material.broker.conf}; restart Mosquitto once to "
                  "load it (a reload does not load plugins).")
    return 0


COMMANDS = {"new-box": _new_box, "verify": _verify, "revoke": _revoke, "list": _list,
            "broker-config": _broker_config}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiepdan-provision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="the controller's configuration (TOML); default "
                        "/etc/tiepdan/controller.toml or $TIEPDAN_CONTROLLER_CONFIG")
    p.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="the provisioning CA")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create the CA, the broker's and the controller's TLS "
                                          "material, and the Mosquitto configuration")
    init.add_argument("--host", action="append",
                      help="a name or address boxes use for the broker and enrollment (repeat; "
                           "default: provisioning.broker_host or mqtt.host, localhost, 127.0.0.1)")
    init.add_argument("--listen-host", help="address the broker listens on (default: all)")
    init.add_argument("--broker-debug-log", action="store_true",
                      help="log at debug level, which is where Mosquitto reports refused "
                           "publishes")
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA (every enrolled box must enroll again)")
    rotate = ca_sub.add_parser("rotate", help="a new online issuing CA, signed by the root "
                                              "(boxes keep working; restart the controller)")
    for command in (init, rotate):
        command.add_argument("--root-key", type=Path, required=True,
                             help="the root CA's encrypted key on offline media (init writes "
                                  "it, rotate reads it)")
        command.add_argument("--passphrase-file", type=Path,
                             help="a file whose first line is the root key's passphrase "
                                  "(default: ask)")
    n = sub.add_parser("new-box", help="claim token, first-boot folder and QR label for a box")
    n.add_argument("--commune", default="", help="commune code, e.g. 17980 (required for a "
                                                  "commune hall's box)")
    n.add_argument("--hall", required=True, help='reception point, e.g. "UBND xã Hưng Nguyên"')
    n.add_argument("--boot", required=True, help="the SD card's mounted boot partition")
    n.add_argument("--device", help="device id (default: generated from kind and commune)")
    n.add_argument("--province", default="", help="province code, e.g. nghe-an")
    n.add_argument("--kind", default="commune", choices=["commune", "province", "central"])
    n.add_argument("--days", type=float, help="days the claim stays valid "
                                              "(default provisioning.token_days)")
    n.add_argument("--labels", default=".", help="where to write <device>.png and .svg "
                                                 "(default: here)")
    v = sub.add_parser("verify", help="wait for a box to come online and show its health")
    v.add_argument("device")
    v.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the box (default %(default)s)")
    r = sub.add_parser("revoke", help="revoke a lost or stolen box, at once")
    r.add_argument("device")
    r.add_argument("--reason", default="lost or stolen")
    ls = sub.add_parser("list", help="every provisioned box and its state")
    ls.add_argument("--json", action="store_true")
    b = sub.add_parser("broker-config", help="rewrite the broker's tiepdan.conf after an "
                                             "upgrade (keeps the CA and certificates)")
    b.add_argument("--listen-host", help="address the broker listens on (default: all)")
    b.add_argument("--broker-debug-log", action="store_true",
                   help="log at debug level (refused publishes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    logs.setup()
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    try:
        if args.command == "ca":
            if args.ca_command == "rotate":
                return _ca_rotate(config, args, console)
            return _ca_init(config, args, console)
        return COMMANDS[args.command](config, args, console)
    except ApiError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    except (OSError, ValueError, DynsecError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
