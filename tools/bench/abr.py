"""Adaptive bitrate benchmark: one box on a poor link, with adaptation on and off, same run.

A host point and a commune box join a session through the real aiortc bridge (the controller in
this process). The box runs in a network namespace (`tabr...`); for the middle stretch its link
becomes token buckets (`--up`, `--down` kbit/s, 300 ms queues) with `--loss` random UDP loss
each way (`tools/poorlink.py`: netem is not available everywhere, tbf and iptables stand in for
it). Its camera is the synthetic one with sensor-like grain at 320x180, 10 fps, 600 kbit/s at
most, so the encoder spends what it is given as on a real camera.

Per mode and stretch (clear, limited, recovering, recovered): the box's encoder target and
what it sends (its call telemetry, medians), the picture sizes it used, how many of its
pictures the bridge decoded and in how many whole seconds none arrived (a frozen picture),
the composed picture's encoder target and how many composed pictures a second the box decodes.
The last line is one JSON object with every figure.

    python -m tiepdan.tools.bench.abr
    python -m tiepdan.tools.bench.abr --up 300 --down 250 --loss 0.05 --limited 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aioice.ice
import msgspec
import tomli_w

from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.service import Controller
from tiepdan.tools import netns, poorlink
from tiepdan.tools.broker import Mosquitto, free_port

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CAMERA = {"width": 320, "height": 180, "fps": 10, "grain": 8}
CEILING = 600_000


def profile(workdir: Path) -> Path:
    text = (ROOT / "board" / "profiles" / "sim.toml").read_text()
    for key, value in CAMERA.items():
        if key != "grain":
            text = text.replace(f"{key} = {dict(width=640, height=360, fps=15)[key]}",
                                f"{key} = {value}", 1)
    text = text.replace("[camera]\n", f"[camera]\ngrain = {CAMERA['grain']}\n", 1)
    path = workdir / "bench-sim.toml"
    path.write_text(text)
    return path


def box_config(workdir: Path, broker: Mosquitto, device: str, host: str, adaptive: bool,
               board: Path) -> Path:
    path = workdir / f"{device}.toml"
    path.write_text(tomli_w.dumps({
        "device": {"id": device, "name": f"UBND {device}", "kind": "commune"},
        "board": {"profile": str(board)},
        "mqtt": {"host": host, "port": broker.port, "tls": False, "keepalive": 2,
                 "reconnect_min": 0.2, "reconnect_max": 1.0},
        "state": {"dir": str(workdir / device)},
        "call": {"media_timeout": 4.0, "join_timeout": 15.0, "qos_interval": 1.0,
                 "video_bitrate": CEILING, "min_video_bitrate": 50_000,
                 "adaptive_bitrate": adaptive},
        "recording": {"enabled": False},
        "log": {"level": "info"},
    }))
    return path


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def measure(workdir: Path, adaptive: bool, args: argparse.Namespace,
                  index: int) -> dict[str, Any]:
    mode = "adaptive" if adaptive else "fixed"
    run_dir = workdir / mode
    run_dir.mkdir()
    board = profile(run_dir)
    port = free_port()
    with netns.namespace("tabr", index=index, subnet=235) as ns:
        # On loopback for the controller and the host; on the veth for the box.
        broker = Mosquitto(run_dir / "broker", port=port, listeners=(
            f"listener {port} 127.0.0.1\nlistener {port} {ns.host_ip}\nallow_anonymous true\n"))
        broker.start()
        setattr(aioice.ice, "get_host_addresses",  # noqa: B010 - the bridge's only address
                lambda use_ipv4=True, use_ipv6=True: [ns.host_ip])
        config = msgspec.convert({
            "controller": {"id": f"bench-abr-{mode}", "data_dir": str(run_dir / "controller")},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": False, "keepalive": 5,
                     "reconnect_min": 0.2, "reconnect_max": 1.0},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "boxes": {"host": "127.0.0.1", "port": 0},
            "provisioning": {"enroll_host": "127.0.0.1", "enroll_port": 0,
                             "broker_reload": []},
            "bridge": {"width": 640, "height": 360, "fps": 10, "bitrate": CEILING,
                       "min_bitrate": 60_000, "adaptive_bitrate": adaptive,
                       "media_timeout": 4.0, "connect_timeout": 20.0},
            "sessions": {"invite_timeout": 5.0},
            "log": {"level": "warning"},
            "archive": {"trial_identity": True},  # a benchmark, not a deployment
        }, ControllerConfig)
        controller = Controller(config)
        ready = asyncio.Event()
        task = asyncio.create_task(controller.run(ready))
        children: list[subprocess.Popen[bytes]] = []
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            host, poor = f"h-{mode}", f"p-{mode}"
            for device, argv in (
                    (host, [sys.executable, "-m", "tiepdan.firmware", "--config",
                            str(box_config(run_dir, broker, host, "127.0.0.1", adaptive,
                                           board))]),
                    (poor, ns.command([sys.executable, "-m", "tiepdan.firmware", "--config",
                                       str(box_config(run_dir, broker, poor, ns.host_ip,
                                                      adaptive, board))]))):
                with (run_dir / f"{device}.log").open("wb") as out:
                    children.append(subprocess.Popen(  # noqa: ASYNC220 - returns at once
                        argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))

            def online(device: str) -> bool:
                found = controller.registry.get(device)
                return bool(found and found.online)

            await wait_for(lambda: online(host) and online(poor), 60, "boxes online")
            session = await controller.sessions.open(host, [poor], auto_join=True)

            def live() -> bool:
                point = controller.sessions.point(session.id, poor)
                return point is not None and point.state == "live"

            await wait_for(live, 60, "the box live")
            watch = poorlink.LinkWatch(controller, session.id, poor)
            await wait_for(lambda: watch.qos().get("kbps_sent") is not None, 20, "telemetry")
            phases = [await watch.phase("clear", args.clear)]
            load = os.getloadavg()[0]
            with poorlink.poor_link(ns, args.up, args.loss, downlink_kbit=args.down):
                await watch.phase("settling", args.settle)
                phases.append(await watch.phase("limited", args.limited))
            phases.append(await watch.phase("recovering", args.recovery))
            phases.append(await watch.phase("recovered", args.clear))
            point = controller.sessions.point(session.id, poor)
            return {"mode": mode, "phases": [p.figures() for p in phases],
                    "rejoins": max(0, (point.attempt if point else 1) - 1),
                    "state": point.state if point else None, "load_1min": round(load, 2)}
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
            controller.request_stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(20):
                    await task
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.abr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--up", type=int, default=300, help="uplink kbit/s while limited")
    parser.add_argument("--down", type=int, default=250, help="downlink kbit/s while limited")
    parser.add_argument("--loss", type=float, default=0.05, help="random UDP loss each way")
    parser.add_argument("--clear", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--limited", type=float, default=20.0)
    parser.add_argument("--recovery", type=float, default=20.0)
    parser.add_argument("--modes", nargs="+", default=["adaptive", "fixed"],
                        choices=["adaptive", "fixed"])
    args = parser.parse_args(argv)
    if not netns.available():
        print("needs root and iproute2 (network namespaces)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="tiepdan-bench-abr-") as tmp:
        for index, mode in enumerate(args.modes):
            result = asyncio.run(measure(Path(tmp), mode == "adaptive", args, index))
            results.append(result)
            print(f"{mode}: rejoins {result['rejoins']}, state at the end {result['state']}, "
                  f"load {result['load_1min']}")
            for phase in result["phases"]:
                print(f"  {phase['phase']:10} box target {phase['target_kbps']} kbit/s, "
                      f"sends {phase['sent_kbps']} kbit/s, heights {phase['heights']}; "
                      f"bridge decoded {phase['frames']} of its pictures "
                      f"({phase['fps_at_bridge']} fps, {phase['frozen_s']} s frozen); "
                      f"composed {phase['composed_kbps']} kbit/s, "
                      f"box decodes {phase['received_fps']} fps", flush=True)
    by_mode = {r["mode"]: {p["phase"]: p for p in r["phases"]} for r in results}
    ratio = None
    if "adaptive" in by_mode and "fixed" in by_mode:
        fixed = by_mode["fixed"]["limited"]["frames"]
        adaptive = by_mode["adaptive"]["limited"]["frames"]
        ratio = round(adaptive / fixed, 2) if fixed else None
        print(f"frames delivered while limited, adaptive / fixed (same run): {adaptive} / "
              f"{fixed}" + (f" = {ratio}" if ratio is not None else ""))
    print(json.dumps({"bench": "abr", "link": {"up_kbit": args.up, "down_kbit": args.down,
                                               "loss": args.loss, "queue_ms": poorlink.QUEUE_MS},
                      "camera": "320x180@10 grain 8, 600 kbit/s ceiling",
                      "results": results, "limited_frames_adaptive_over_fixed": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
