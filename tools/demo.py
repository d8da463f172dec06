"""`tiepdan-demo`: a broker, the controller and simulated boxes, with a live fleet table.

Every part is the real program in its own process (Mosquitto, `tiepdan-controller run`, one
`tiepdan-agent` per box on the simulated board); only the hardware is simulated. Security is
the real thing too: the demo creates the provisioning CA as `tiepdan-provision ca init` does,
the broker accepts mutual TLS only, and each box is provisioned like a new one (claim token and
first-boot folder from the controller) and enrolls itself with `tiepdan-enroll` before its agent
starts; the demo writes no box setting itself, enrollment does. Ctrl-C stops everything;
`--duration` stops it after that many seconds, for scripts. `--bridge janus` runs the session
through the Janus backend: Debian's janus started in a network namespace of its own, as the
tests start it (needs root).
The exit status is 0 when every box was seen online.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import pyrage
import tomli_w
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.cli.fleet_table import fleet_table
from tiepdan.controller.cli.provision import new_box
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.firmware.evidence.identity import write_private
from tiepdan.firmware.screen.presenter import SNAPSHOT_ENV
from tiepdan.provisioning.material import initialise
from tiepdan.tools import netns
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.janus import Janus, JanusError, janus_binary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPoint:
    id: str
    name: str
    kind: str
    province: str = ""
    commune: str = ""


POINTS = [
    DemoPoint("tw-ban-tcd", "Ban Tiếp công dân Trung ương", "central"),
    DemoPoint("nghe-an-ban-tcd", "Ban Tiếp công dân tỉnh Nghệ An", "province", "nghe-an"),
    DemoPoint("xa-hung-nguyen", "UBND xã Hưng Nguyên", "commune", "nghe-an", "hung-nguyen"),
    DemoPoint("xa-dien-chau", "UBND xã Diễn Châu", "commune", "nghe-an", "dien-chau"),
    DemoPoint("xa-quynh-luu", "UBND xã Quỳnh Lưu", "commune", "nghe-an", "quynh-luu"),
]


def demo_points(count: int) -> list[DemoPoint]:
    points = POINTS[:count]
    for n in range(len(points), count):
        points.append(DemoPoint(f"xa-demo-{n:03d}", f"UBND xã Demo {n}", "commune", "nghe-an",
                                f"demo-{n:03d}"))
    return points


class Processes:
    """Child processes, each logging to its own file, stopped in reverse order."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logdir / f"{name}.log").open("ab") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)
        self.children.append((name, child))
        return child

    def dead(self) -> list[str]:
        return [name for name, child in self.children if child.poll() is not None]

    def stop(self, timeout: float = 10.0) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, child in reversed(self.children):
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def controller_settings(workdir: Path, broker: Mosquitto, http_port: int) -> dict[str, Any]:
    return {
        "controller": {"id": "central", "data_dir": str(workdir / "controller")},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": True},
        "http": {"host": "127.0.0.1", "port": http_port},
        "boxes": {"host": "127.0.0.1", "port": free_port()},
        "log": {"level": "info"},
        "provisioning": {"broker_host": broker.host, "broker_reload": broker.reload_command(),
                         "enroll_host": "127.0.0.1", "enroll_port": free_port(),
                         "renew_host": "127.0.0.1", "renew_port": free_port()},
        # The controller gets only the archivist's public recipient, never the identity.
        "archive": {"recipients": [archivist_recipient(workdir / "archivist")]},
    }


def archivist_recipient(folder: Path) -> str:
    """The archivist's age identity, made apart from the controller's data (as it would be on
    the archivist's offline machine); returns its public recipient."""
    identity_file = folder / "identity.txt"
    if not identity_file.exists():
        identity = pyrage.x25519.Identity.generate()
        write_private(identity_file, f"# public key: {identity.to_public()}\n{identity}\n"
                      .encode())
    secret = identity_file.read_text().splitlines()[-1]
    return str(pyrage.x25519.Identity.from_str(secret).to_public())


def secure_broker(workdir: Path, broker: Mosquitto, config: ControllerConfig) -> None:
    """`tiepdan-provision ca init`: the CA, the TLS material, and the broker's TLS listener."""
    material = material_for(config)
    # The root CA's key as on offline media: apart from the controller's data, encrypted.
    offline = workdir / "offline"
    offline.mkdir(mode=0o700, parents=True, exist_ok=True)
    passphrase = secrets.token_urlsafe(24)
    write_private(offline / "root-passphrase.txt", f"{passphrase}\n".encode())
    initialise(material, controller=config.controller.id, hosts=[broker.host, "localhost"],
               broker_port=broker.port, listen_host=broker.host,
               cert_days=config.provisioning.server_cert_days,
               crl_days=config.provisioning.crl_days, root_key=offline / "root.key",
               passphrase=passphrase.encode())
    broker.listeners = material.broker.conf.read_text()


def provision_boxes(workdir: Path, client: ApiClient, broker: Mosquitto,
                    points: list[DemoPoint], logdir: Path, stop: dict[str, bool],
                    timeout: float = 90) -> list[str]:
    """Each box as a technician would: SD-card folder from the controller, then first boot
    (`tiepdan-enroll`, all boxes at once). Returns the boxes that failed to enroll."""
    enrolling: dict[str, subprocess.Popen[bytes]] = {}
    for point in points:
        boot = workdir / "boot" / point.id
        boot.mkdir(parents=True, exist_ok=True)
        new_box(client, commune=point.commune, hall=point.name, boot=boot,
                labels=workdir / "labels", device=point.id, province=point.province,
                kind=point.kind)
        config = workdir / f"{point.id}.toml"  # written by enrollment alone, as on a box
        with (logdir / f"{point.id}.log").open("ab") as out:
            enrolling[point.id] = subprocess.Popen(
                [sys.executable, "-m", "tiepdan.firmware.firstboot.enroll", "--boot", str(boot),
                 "--state-dir", str(workdir / "boxes" / point.id), "--config", str(config),
                 "--give-up-after", str(timeout)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in enrolling.values()) and not stop["now"] \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in enrolling.values():
        if process.poll() is None:
            process.kill()
            process.wait()
    return [name for name, p in enrolling.items() if p.returncode != 0]


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:g}s")


def wait_for_api(config_path: Path, token_file: Path, url: str, timeout: float) -> ApiClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if token_file.exists():
            client = ApiClient(url, token_file.read_text().strip(), timeout=2)
            with contextlib.suppress(ApiError):
                if client.get("/api/health").get("mqtt"):
                    return client
        time.sleep(0.1)
    raise RuntimeError(f"the controller ({config_path}) did not come up in {timeout:g}s")


def open_session(client: ApiClient, points: list[DemoPoint]) -> dict[str, Any] | None:
    """A reception session chaired by the first point, every other point invited."""
    try:
        result = client.call("POST", "/api/sessions", body={
            "host": points[0].id, "invite": [p.id for p in points[1:]],
            "title": "Tiếp công dân trực tuyến (demo)", "auto_join": True})
    except ApiError as exc:
        log.error("demo_session_failed error=%s", exc)
        return None
    return dict(result["session"])


def session_line(session: dict[str, Any] | None, archive: dict[str, Any]) -> Text:
    if session is None:
        return Text("session: waiting for every box", style="dim")
    points = session.get("points", [])
    live = sum(1 for p in points if p["state"] == "live")
    recordings = archive.get("recordings", [])
    return Text.assemble(("session ", "bold"), f"{session['id']} ",
                         (session["state"], "green" if session["state"] == "live" else "yellow"),
                         f"  {live}/{len(points)} points live  host {session['host']}  ",
                         ("recorded ", "bold"),
                         f"{sum(r['stored'] for r in recordings)} segments from "
                         f"{len(recordings)} recorders archived")


def close_session(client: ApiClient, session: dict[str, Any], console: Console,
                  timeout: float = 60) -> dict[str, Any]:
    """End the session as the host would, then wait until the archive closes it: every point's
    recording and the bridge's uploaded, verified and signed for."""
    with console.status("ending the session; waiting until every recording is archived"):
        with contextlib.suppress(ApiError):
            client.call("POST", f"/api/sessions/{session['id']}/end", body={})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiError):
                session = client.get(f"/api/sessions/{session['id']}")
                if session["state"] == "closed":
                    break
            time.sleep(0.5)
    archive: dict[str, Any] = {}
    with contextlib.suppress(ApiError):
        archive = client.get(f"/api/archive/sessions/{session['id']}")
    recordings = archive.get("recordings", [])
    segments = sum(r["stored"] for r in recordings)
    size = sum(r["bytes"] for r in recordings)
    if session["state"] == "closed":
        console.print(f"session {session['id']} closed: {len(recordings)} recordings, "
                      f"{segments} segments ({size / 1e6:.1f} MB) archived, verified and signed")
    else:
        console.print(f"[red]session {session['id']} is {session['state']}, not closed:[/red] "
                      + "; ".join(archive.get("problems", [])[:3]))
    return session


DEMO_USER = "demo"


def console_login(python: str, config: Path) -> str:
    """An admin for the web console, made as an operator would (`user add --role admin`)."""
    password = secrets.token_urlsafe(9)
    subprocess.run([python, "-m", "tiepdan.controller", "--config", str(config), "user", "add",
                    DEMO_USER, "--role", "admin", "--password-stdin"], input=password + "\n",
                   text=True, check=True, capture_output=True)
    return password


def run(args: argparse.Namespace, console: Console) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tiepdan-"))
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir / "broker")
    processes = Processes(logdir)
    stop = {"now": False}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    seen_online: set[str] = set()
    points = demo_points(args.boxes)
    session: dict[str, Any] | None = None
    went_live = False
    media = contextlib.ExitStack()
    try:
        http_port = free_port()
        settings = controller_settings(workdir, broker, http_port)
        if args.bridge == "janus":
            janus = media.enter_context(Janus(workdir / "janus",
                                              netns=media.enter_context(
                                                  netns.namespace("tdemo"))))
            settings["bridge"] = {**settings.get("bridge", {}), "backend": "janus",
                                  "janus_url": janus.url, "janus_api_secret": janus.api_secret}
        ctl_config = write_toml(workdir / "controller.toml", settings)
        secure_broker(workdir, broker, msgspec.convert(settings, ControllerConfig))
        broker.start()
        python = sys.executable
        processes.start("controller", [python, "-m", "tiepdan.controller", "--config",
                                       str(ctl_config), "run"])
        client = wait_for_api(ctl_config, workdir / "controller" / "admin.token",
                              f"http://127.0.0.1:{http_port}", timeout=30)
        wait_for_port("127.0.0.1", settings["provisioning"]["enroll_port"], timeout=30)
        password = console_login(python, ctl_config)
        console.print(f"web console: http://127.0.0.1:{http_port}/  sign in as "
                      f"[bold]{DEMO_USER}[/bold] / [bold]{password}[/bold]", highlight=False)
        failed = provision_boxes(workdir, client, broker, points, logdir, stop)
        if failed:
            console.print(f"[red]enrollment failed:[/red] {', '.join(failed)} (logs in {logdir})")
        # The only thing the demo adds to a box is its simulated hardware (TIEPDAN_BOARD, which
        # board.profile = "auto" reads, and with --screens the simulated HDMI's PNG); every
        # setting comes from enrollment.
        simulated = {**os.environ, "TIEPDAN_BOARD": "sim"}
        for point in points:
            env = dict(simulated)
            if args.screens:
                env[SNAPSHOT_ENV] = str(workdir / "screens" / f"{point.id}.png")
            processes.start(point.id, [python, "-m", "tiepdan.firmware", "--config",
                                       str(workdir / f"{point.id}.toml")], env=env)
        started = time.monotonic()
        header = Text.assemble(
            ("tiepdan demo", "bold"), f"  broker 127.0.0.1:{broker.port}  bridge {args.bridge}  ",
            f"console http://127.0.0.1:{http_port}/ ({DEMO_USER} / {password})  mutual TLS, "
            f"{len(points) - len(failed)}/{len(points)} boxes enrolled  logs {logdir}",
        )
        devices: list[dict[str, Any]] = []
        archive: dict[str, Any] = {}
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while not stop["now"]:
                with contextlib.suppress(ApiError):
                    devices = client.get("/api/devices")
                seen_online |= {d["id"] for d in devices if d["online"]}
                if session is None and len(points) > 1 and \
                        seen_online >= {p.id for p in points}:
                    session = open_session(client, points)
                if session is not None:
                    with contextlib.suppress(ApiError):
                        session = client.get(f"/api/sessions/{session['id']}")
                        went_live = went_live or session["state"] == "live"
                        archive = client.get(f"/api/archive/sessions/{session['id']}")
                elapsed = time.monotonic() - started
                footer = Text(f"{elapsed:4.0f}s  Ctrl-C stops", style="dim")
                if processes.dead():
                    footer = Text(f"stopped unexpectedly: {', '.join(processes.dead())}",
                                  style="red")
                live.update(Group(header, fleet_table(devices, title="fleet", width=console.width),
                                  session_line(session, archive), footer))
                if args.duration and elapsed >= args.duration:
                    break
                time.sleep(0.5)
        # A Ctrl-C can land between two polls: look once more before stopping everything.
        with contextlib.suppress(ApiError):
            seen_online |= {d["id"] for d in client.get("/api/devices") if d["online"]}
        if session is not None and went_live:
            console.print()
            session = close_session(client, session, console)
    finally:
        processes.stop()
        broker.stop()
        media.close()
    console.print()
    missing = sorted({p.id for p in points} - seen_online)
    if missing:
        console.print(f"[red]never online:[/red] {', '.join(missing)} (logs in {logdir})")
    else:
        console.print(f"all {len(points)} boxes were online; logs in {logdir}")
    if session is not None:
        live_points = sum(1 for p in session.get("points", []) if p.get("joined_at"))
        console.print(f"session {session['id']} "
                      + (f"went live with {live_points} points" if went_live
                         else f"did not go live ({session['state']})"))
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    closed = session is None or not went_live or session["state"] == "closed"
    return 1 if missing or not closed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiepdan-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=0,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--boxes", type=int, default=len(POINTS),
                        help="number of simulated boxes (default %(default)s: 1 central, "
                             "1 province, 3 communes)")
    parser.add_argument("--workdir", help="keep everything (configs, state, logs) here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--screens", action="store_true",
                        help="give every box a simulated HDMI display and keep what it shows "
                             "in <workdir>/screens/<box>.png")
    parser.add_argument("--bridge", choices=["aiortc", "janus"], default="aiortc",
                        help="the session's media engine (default %(default)s; janus needs root "
                             "and Debian's janus)")
    args = parser.parse_args(argv)
    if args.boxes < 1:
        parser.error("--boxes must be at least 1")
    if args.bridge == "janus":
        try:
            janus_binary()
        except JanusError as exc:
            parser.error(str(exc))
        if not netns.available():
            parser.error("--bridge janus runs Janus in a network namespace: run as root")
    return run(args, Console())


if __name__ == "__main__":
    sys.exit(main())
