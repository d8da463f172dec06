"""OTA benchmark: one campaign to N simulated boxes, and bundle download + verify throughput.

The controller runs as its own `tiepdan-controller run` process, serving the TUF repository
and running the campaign engine; N boxes (real agents with real A/B roots, `tools/simbox.py`)
are hosted in worker processes; one Mosquitto. The campaign goes 1 % -> 10 % -> 50 % -> 100 %
with failure thresholds, a download cap and randomised download delays, and every box really
fetches (TUF refresh + bundle over HTTP), verifies, installs into its spare slot, switches,
restarts its agent, runs its health check and commits. Boxes fetch from the controller's box
listener with their client certificates (mutual TLS; issued and bound before the controller
starts, as enrollment would). Printed: wall time from start to completion, peak CPU and memory
of the controller process (sampled), and, in the same run, the bundle download + TUF verify
throughput against a raw HTTPS GET of the same file with the same certificate.

    python -m tiepdan.tools.bench.ota --boxes 1000

Roots live on tmpfs (/dev/shm) by default: a real fleet has one SD card per box, this machine
has one disk for all of them. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import tomli_w
import urllib3
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from tiepdan.board.profile import load_profile
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.enrollment.provisioning import material_for
from tiepdan.controller.identities import Identities
from tiepdan.controller.store import Database
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.core.mqtt import client_context
from tiepdan.firmware.evidence.identity import Identity
from tiepdan.firmware.update.fetcher import ResumableFetcher
from tiepdan.firmware.update.slots import install_image
from tiepdan.ota.bundle import build_bundle, build_wheel
from tiepdan.ota.repository import Keyring, UpdateRepository
from tiepdan.provisioning.ca import cert_pem, new_key, serial_hex, write_key, write_public
from tiepdan.provisioning.material import initialise
from tiepdan.tools.bench.fleet import CannedSensors, QuietPanel, raise_fd_limit
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.simbox import SimBox, stop_all

log = logging.getLogger(__name__)
SOURCE = Path(__file__).resolve().parents[2]


def box_config(workdir: Path, port: int, n: int) -> AgentConfig:
    device = f"bench-{n:05d}"
    return msgspec.convert({
        "device": {"id": device, "name": f"Bench {n}"},
        "board": {"profile": "sim"},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": False, "keepalive": 30,
                 "reconnect_min": 1.0, "reconnect_max": 10.0},
        "telemetry": {"interval": 60.0},
        "state": {"dir": str(workdir / "boxes" / device / "state")},
        "log": {"level": "warning"},
        "ota": {"root": str(workdir / "boxes" / device / "root"),
                "trusted_root": str(workdir / "trusted-root.json"), "clock": "trust",
                "retry_delay": 2.0, "health_timeout": 120.0,
                # Many boxes in one process: each does its updater's work itself.
                "updater_socket": ""},
    }, AgentConfig)


def host_boxes(workdir: Path, port: int, first: int, count: int, ready: Any, stop: Any) -> None:
    """A worker process hosting `count` boxes until `stop` is set."""
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING)
    profile = load_profile("sim")

    async def run() -> None:
        boxes, tasks = [], []
        for n in range(first, first + count):
            box = SimBox(box_config(workdir, port, n), profile, QuietPanel, CannedSensors())
            boxes.append(box)
            tasks.append(asyncio.create_task(box.run()))
            if n % 50 == 0:
                await asyncio.sleep(0.05)
        ready.set()
        await asyncio.to_thread(stop.wait)
        await stop_all(boxes, tasks)

    asyncio.run(run())


def prepare_roots(workdir: Path, template: Path, boxes: int) -> None:
    """Every box starts from the same image; hard links make that cheap (slot a is read-only)."""
    for n in range(boxes):
        root = workdir / "boxes" / f"bench-{n:05d}" / "root"
        root.parent.mkdir(parents=True)
        shutil.copytree(template, root, symlinks=True, copy_function=os.link,
                        ignore=shutil.ignore_patterns(".lock", "boot.json"))
        (root / "boot.json").write_bytes((template / "boot.json").read_bytes())


class Sampler:
    """Peak CPU (%) and RSS (MiB) of one process, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.cpu: list[float] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.process.cpu_percent()
        while not self._stop.wait(0.5):
            with contextlib.suppress(psutil.Error):
                self.cpu.append(self.process.cpu_percent())
                self.rss.append(self.process.memory_info().rss / 2**20)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def admit_boxes(workdir: Path, settings: dict[str, Any], boxes: int) -> None:
    """What enrollment leaves behind, for every box: its certificate from the provisioning CA
    under `<state>/tls/`, and its signing key bound at the controller with that serial."""
    config = msgspec.convert(settings, ControllerConfig)
    material = material_for(config)
    initialise(material, controller="central", hosts=["127.0.0.1"],
               broker_port=config.mqtt.port, listen_host="127.0.0.1", cert_days=30,
               crl_days=30)
    ca = material.authority()
    db = Database(config.data_dir / "controller.db")
    identities = Identities(db)
    try:
        for n in range(boxes):
            box = box_config(workdir, config.mqtt.port, n)
            key = new_key()
            cert = ca.issue_client(key.public_key(), box.device.id, 30)
            write_key(box.state_dir / "tls" / "device.key", key)
            write_public(box.state_dir / "tls" / "device.pem", cert_pem(cert))
            write_public(box.state_dir / "tls" / "ca.pem", ca.pem)
            identities.bind(box.device.id, Identity(box.state_dir).signing_public_raw(),
                            cert_serial=serial_hex(cert))
    finally:
        db.close()


def throughput(base: str, repo: UpdateRepository, target: str, trusted: bytes, rounds: int,
               workdir: Path, tls: Any) -> dict[str, float]:
    """MB/s of a raw HTTPS GET against a full TUF fetch (refresh, download, length and hash),
    both with the same box certificate."""
    info: TargetFile = repo.targets().targets[target]
    url = f"{base}/targets/{info.hashes['sha256']}.{target}"
    pool = urllib3.PoolManager(ssl_context=tls)
    started = time.perf_counter()
    for _ in range(rounds):
        data = pool.request("GET", url).data
        assert len(data) == info.length
    raw = time.perf_counter() - started
    started = time.perf_counter()
    for k in range(rounds):
        folder = workdir / "tput" / str(k)
        (folder / "metadata").mkdir(parents=True)
        fetcher = ResumableFetcher(folder / "partial", targets_prefix=f"{base}/targets/",
                                   tls=tls)
        updater = Updater(str(folder / "metadata"), f"{base}/metadata/", str(folder / "t"),
                          f"{base}/targets/", fetcher=fetcher, bootstrap=trusted)
        found = updater.get_targetinfo(target)
        assert found is not None
        updater.download_target(found)
        shutil.rmtree(folder)
    tuf = time.perf_counter() - started
    mb = info.length * rounds / 1e6
    return {"bytes": info.length, "raw_mb_s": round(mb / raw, 1), "tuf_mb_s": round(mb / tuf, 1),
            "ratio": round(raw / tuf, 3)}


def add_blob(repo: UpdateRepository, workdir: Path, size: int) -> str:
    """A large signed target (random bytes) for steady-state throughput."""
    name = f"blob-{size // 2**20}m.bin"
    path = workdir / name
    path.write_bytes(os.urandom(size))
    with repo.locked():
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, repo.targets_dir / f"{digest}.{name}")
        with repo.edit_targets() as targets:
            targets.targets[name] = TargetFile(length=size, hashes={"sha256": digest}, path=name)
        repo.do_snapshot()
        repo.do_timestamp()
    return name


def run(boxes: int, procs: int, waves: str, max_concurrent: int, notify_rate: float,
        jitter: float, rounds: int, blob_mb: int, workdir: Path) -> dict[str, Any]:
    raise_fd_limit()
    built = time.monotonic()
    base_bundle = build_bundle(build_wheel(SOURCE, "1.0.0", workdir / "w1"), workdir / "dist")
    new_bundle = build_bundle(build_wheel(SOURCE, "1.1.0", workdir / "w2"), workdir / "dist")
    template = workdir / "template"
    install_image(template, base_bundle)
    prepare_roots(workdir, template, boxes)
    keys = workdir / "controller" / "ota" / "keys"
    repo = UpdateRepository(workdir / "controller" / "ota" / "repository", Keyring())
    repo.initialise(keys, [workdir / "offline"])
    repo.add_bundle(new_bundle)
    blob = add_blob(repo, workdir, blob_mb * 2**20)
    (workdir / "trusted-root.json").write_bytes(repo.trusted_root())
    setup_s = time.monotonic() - built

    broker = Mosquitto(workdir / "broker")
    broker.start()
    http_port, boxes_port = free_port(), free_port()
    config = workdir / "controller.toml"
    settings: dict[str, Any] = {
        "controller": {"id": "central", "data_dir": str(workdir / "controller")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": False},
        "http": {"host": "127.0.0.1", "port": http_port},
        "boxes": {"host": "127.0.0.1", "port": boxes_port},
        "provisioning": {"enroll_host": "127.0.0.1", "enroll_port": 0, "broker_reload": []},
        "log": {"level": "warning"},
        "archive": {"trial_identity": True},  # a benchmark, not a deployment
        "ota": {"tick": 0.5},
    }
    config.write_text(tomli_w.dumps(settings))
    admit_boxes(workdir, settings, boxes)
    controller = subprocess.Popen(
        [sys.executable, "-m", "tiepdan.controller", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "controller.log").open("wb"))
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = []
    try:
        token = workdir / "controller" / "admin.token"
        deadline = time.monotonic() + 30
        while not token.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        api = ApiClient(f"http://127.0.0.1:{http_port}", token.read_text().strip())
        share = -(-boxes // procs)
        for k in range(procs):
            first, count = k * share, min(share, boxes - k * share)
            if count <= 0:
                break
            ready = ctx.Event()
            worker = ctx.Process(target=host_boxes, args=(workdir, broker.port, first, count,
                                                          ready, stop))
            worker.start()
            workers.append(worker)
        online, deadline = 0, time.monotonic() + max(60, boxes / 10)
        while online < boxes and time.monotonic() < deadline:
            with contextlib.suppress(ApiError):
                online = api.get("/api/stats")["online"]
            time.sleep(0.5)
        base = f"https://127.0.0.1:{boxes_port}/ota"
        tls = client_context(box_config(workdir, broker.port, 0).box_tls())
        wave_specs = [{"percent": float(p), "max_failure_percent": 10.0, "min_finished": 1}
                      for p in waves.split(",")]
        with Sampler(controller.pid) as sampler:
            started = time.monotonic()
            created = api.call("POST", "/api/ota/campaigns", body={"actor": "bench", "spec": {
                "target": "tiepdan-1.1.0.tar", "version": "1.1.0", "waves": wave_specs,
                "max_concurrent": max_concurrent, "notify_rate": notify_rate,
                "download_jitter": jitter}})
            campaign = created["id"]
            summary = created
            while summary["state"] == "running" and time.monotonic() - started < 1800:
                time.sleep(1.0)
                with contextlib.suppress(ApiError):
                    summary = api.get(f"/api/ota/campaigns/{campaign}")
            wall = time.monotonic() - started
        states: dict[str, int] = {}
        for wave in summary["waves"]:
            for state, n in wave["states"].items():
                states[state] = states.get(state, 0) + n
        tput_bundle = throughput(base, repo, "tiepdan-1.1.0.tar", repo.trusted_root(), rounds,
                                 workdir, tls)
        tput_blob = throughput(base, repo, blob, repo.trusted_root(), max(3, rounds // 10),
                               workdir, tls)
        return {
            "benchmark": "ota",
            "boxes": boxes,
            "online_at_start": online,
            "box_processes": len(workers),
            "setup_s": round(setup_s, 1),
            "campaign_state": summary["state"],
            "campaign_reason": summary["reason"],
            "box_states": states,
            "campaign_wall_s": round(wall, 1),
            "controller_cpu_peak_percent": round(max(sampler.cpu, default=0.0), 1),
            "controller_cpu_mean_percent": round(sum(sampler.cpu) / max(len(sampler.cpu), 1), 1),
            "controller_rss_peak_mib": round(max(sampler.rss, default=0.0), 1),
            "bundle_bytes": tput_bundle["bytes"],
            "bundle_raw_mb_s": tput_bundle["raw_mb_s"],
            "bundle_tuf_mb_s": tput_bundle["tuf_mb_s"],
            "bundle_tuf_vs_raw": tput_bundle["ratio"],
            "blob_bytes": tput_blob["bytes"],
            "blob_raw_mb_s": tput_blob["raw_mb_s"],
            "blob_tuf_mb_s": tput_blob["tuf_mb_s"],
            "blob_tuf_vs_raw": tput_blob["ratio"],
        }
    finally:
        stop.set()
        for worker in workers:
            worker.join(90)
            if worker.is_alive():
                worker.kill()
        controller.terminate()
        controller.wait(15)
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.ota",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="processes hosting the boxes (default: cores - 1)")
    parser.add_argument("--waves", default="1,10,50,100")
    parser.add_argument("--max-concurrent", type=int, default=200)
    parser.add_argument("--notify-rate", type=float, default=100.0)
    parser.add_argument("--jitter", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=30, help="throughput rounds")
    parser.add_argument("--blob-mb", type=int, default=32, help="large target for throughput")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default: a fresh folder under /dev/shm (tmpfs)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shm = Path("/dev/shm")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tiepdan-ota-bench-",
                                                    dir=shm if shm.is_dir() else None))
    try:
        result = run(args.boxes, args.procs, args.waves, args.max_concurrent, args.notify_rate,
                     args.jitter, args.rounds, args.blob_mb, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0 if result["campaign_state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
