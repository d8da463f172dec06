"""Session benchmark: 1 host + N points through the bridge, against a naive relay, same run.

The points come two ways (`--points-as`, both in turn if asked):

- replayers (the default): light points (`tools/bench/replayer.py`) that send H.264 and Opus
  recorded once at start and count what they receive without decoding it, so the figure is
  the bridge's. Only the host measures: it sends its live synthetic camera (640x360 at 15 fps,
  encoded as a box does, with its burned-in tag) and decodes the composed picture, reading the
  tag in its own tile. The host is alone in one process; the other points share
  `--replayer-procs` processes.
- boxes: every box is a real agent in its own process on the simulated board (synthetic camera
  with its tag, a tone for a microphone, recording on). A probe in each box process counts the
  composed pictures it decodes and, once a second, reads the tag in every tile of the newest one
  (from a queue of one picture, so the probe's own lateness is not counted).

Either way the tag's capture time against the receiver's clock is the latency camera -> encode
-> bridge (decode, compose, encode) -> decode, all on one host clock. The bridge is the real
controller in its own process.

Up to three bridges, measured one after the other for each N, with the same points and settings:
- shared: the built-in aiortc bridge, which encodes the composed picture once for everybody;
- naive: the same bridge with one encoder per receiver (what aiortc's MediaRelay gives);
- janus: the Janus backend (Debian's janus in a `tben` network namespace; needs root): Janus
  forwards and mixes, the controller's compositor decodes, composes and encodes once. Its
  bridge CPU is the controller's plus Janus's. In the default list wherever it can run.
- janus-light (only when asked): the same with `--light-points` points (not the host) moved
  onto the light rendition of the composed picture, by the bridge's own rule fed reports of
  heavy loss: the controller's added cost of the second, light encode (ratio against janus).

    python -m tiepdan.tools.bench.session --points 8 16 32 --window 15
    python -m tiepdan.tools.bench.session --points 8 --points-as replayers boxes
    python -m tiepdan.tools.bench.session --points 4 --bridges shared --points-as boxes \\
        --box-recording reencode
    python -m tiepdan.tools.bench.session --points 2 --bridges janus janus-light --window 20

`--box-recording` chooses how full boxes record the received picture (`copy`, the default, or
`reencode`): box CPU before and after recording it as it arrives.

Printed per N and bridge: received fps at every point (min / median), latency p50 / p95,
bridge CPU per point, the points' CPU, the load average before and after the window; then the
ratios against the naive relay and the largest N holding 14.5 fps. The last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import psutil
import pyrage
import tomli_w
from av.stream import Stream
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiepdan.board.camera.tag import read_tag
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.sessions.bridge.aiortc_bridge import AiortcSession, Member
from tiepdan.firmware.evidence.recipients import sign_document
from tiepdan.firmware.media.fanout import Subscription
from tiepdan.firmware.media.h264 import H264Encoder
from tiepdan.firmware.media.rtc import PacketTrack
from tiepdan.tools import netns
from tiepdan.tools.bench.replayer import ReplayPoint, record_clip
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.janus import Janus, JanusError, janus_binary

log = logging.getLogger(__name__)

FPS = 15


# -- the naive relay --------------------------------------------------------------------------


class PerReceiverEncoder:
    """A packet source that encodes the composed picture for one receiver (N receivers, N
    encoders), with the same encoder settings as the shared one."""

    def __init__(self, frames: Subscription[av.VideoFrame], encoder: H264Encoder) -> None:
        self._frames = frames
        self.encoder = encoder
        self._pending: list[av.Packet[Stream]] = []

    async def get(self) -> av.Packet[Stream] | None:
        loop = asyncio.get_running_loop()
        while not self._pending:
            frame = await self._frames.get()
            if frame is None:
                return None
            self._pending = await loop.run_in_executor(None, self.encoder.encode, frame)
        return self._pending.pop(0)

    def close(self) -> None:
        self._frames.close()


class NaiveSession(AiortcSession):
    def _video_source(self, member: Member) -> Any:
        c = self.config
        encoder = H264Encoder(c.width, c.height, c.fps, c.bitrate,
                              keyframe_interval=c.keyframe_interval, preset=c.preset)
        source = PerReceiverEncoder(self.composed_frames.subscribe(member.device), encoder)
        return PacketTrack(source), encoder.request_key


async def run_bridge(config_path: Path, mode: str, light: int = 0) -> None:
    from tiepdan.controller.config import load_config
    from tiepdan.controller.service import Controller
    from tiepdan.firmware.core import logs

    config = load_config(config_path)
    logs.setup(config.log.level, config.log.format)
    controller = Controller(config)
    if mode == "naive":
        controller.bridge.session_class = NaiveSession  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, controller.request_stop)
    forcing = asyncio.ensure_future(force_light(controller, light)) if light else None
    try:
        await controller.run()
    finally:
        if forcing is not None:
            forcing.cancel()


async def force_light(controller: Any, count: int) -> None:
    """Keep `count` points (never the host) of every Janus session on the light rendition,
    through the bridge's own rule: reports of heavy loss, as a box on a poor link sends."""
    from tiepdan.firmware import protocol

    heavy = protocol.CallQos(loss_received=1.0)
    confirmed: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        for media in list(controller.bridge._sessions.values()):
            guests = sorted(d for d, p in media.points.items()
                            if p.role != "host" and p.view is not None)
            for device in guests[:count]:
                if media.rendition(device) != "light":
                    media.link_report(device, heavy)
            viewers = media.compositor.light_viewers
            if viewers and media.id not in confirmed:
                confirmed.add(media.id)  # the log is at warning: say it at that level
                logging.getLogger("bench").warning("bench_light_on session=%s points=%s",
                                                   media.id, ",".join(sorted(viewers)))


# -- the box with its probe -------------------------------------------------------------------


async def run_box(config_path: Path, out: Path) -> None:
    from tiepdan.firmware.agent.agent import Agent
    from tiepdan.firmware.agent.config import load_config
    from tiepdan.firmware.core import logs

    config = load_config(config_path)
    logs.setup(config.log.level, config.log.format)
    agent = Agent(config)
    arrivals: list[float] = []
    ages: list[tuple[float, int]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def count() -> None:
        subscription = agent.call.received_video.subscribe("bench-fps", capacity=60)
        async for _ in subscription:
            arrivals.append(time.time())

    async def probe() -> None:
        # Its own queue holds one fresh picture: a probe short of CPU must not measure the
        # time pictures waited for it (the box dropped nothing; the probe would add delay).
        subscription = agent.call.received_video.subscribe("bench-age", capacity=1,
                                                           max_age=0.05)
        next_read = 0.0
        async for frame in subscription:
            now = time.time()
            layout = agent.call.layout
            if layout is None or now < next_read:
                continue
            next_read = now + 1.0
            luma = frame.to_ndarray()[: frame.height]
            for tile in layout.tiles:
                tag = read_tag(luma[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width])
                if tag is not None:
                    ages.append((now, tag.age_ms(int(now * 1000) & 0xFFFFFFFF)))

    task = asyncio.create_task(agent.run())
    probing = [asyncio.create_task(probe()), asyncio.create_task(count())]
    await stop.wait()
    for job in probing:
        job.cancel()
    agent.request_stop()
    await asyncio.gather(task, *probing, return_exceptions=True)
    await asyncio.to_thread(out.write_text, json.dumps({"arrivals": arrivals, "ages": ages}))


async def run_replayers(port: int, devices: list[str], measure: bool, out: Path) -> None:
    """A process of light points (`tools/bench/replayer.py`); the first is the host."""
    clip = await asyncio.to_thread(record_clip)
    points = [ReplayPoint(device, _point_name(device), "127.0.0.1", port, clip,
                          kind="central" if _is_host(device) else "commune", measure=measure)
              for device in devices]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(point.run()) for point in points]
    status = out.with_suffix(".receiving")
    while not stop.is_set():  # how many points see the composed picture, for the orchestra
        now = time.time()
        receiving = sum(1 for p in points if p.figures.arrivals and
                        now - p.figures.arrivals[-1] < 2.0)
        await asyncio.to_thread(status.write_text, f"{receiving}\n")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    figures = {p.device: {"arrivals": p.figures.arrivals, "ages": p.figures.ages}
               for p in points}
    await asyncio.to_thread(out.write_text, json.dumps(figures))


def _receiving(output: Path) -> int:
    try:
        return int(output.with_suffix(".receiving").read_text())
    except (OSError, ValueError):
        return 0


def _point_name(device: str) -> str:
    return f"Điểm {int(device.rsplit('-', 1)[1])}"


def _is_host(device: str) -> bool:
    return device.endswith("-00")


def install_recipients(state_dir: Path) -> None:
    """What enrollment leaves on a box (a controller key, recipients it signed), so the bench's
    boxes really record and seal (to a throwaway archive key)."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    (state_dir / "identity").mkdir(parents=True, exist_ok=True)
    (state_dir / "identity" / "controller.pub").write_text(base64.b64encode(raw).decode() + "\n")
    (state_dir / "recording").mkdir(parents=True, exist_ok=True)
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    (state_dir / "recording" / "recipients.json").write_bytes(sign_document([recipient], key))


# -- the orchestra ----------------------------------------------------------------------------


def janus_present() -> bool:
    try:
        janus_binary()
    except JanusError:
        return False
    return True


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "tiepdan.tools.bench.session", *args]


def measure(workdir: Path, broker: Mosquitto, points: int, mode: str, window: float,
            size: tuple[int, int], janus: Janus | None = None,
            box_recording: str = "copy", points_as: str = "replayers",
            replayer_procs: int = 2, light_points: int = 1) -> dict[str, Any]:
    """1 + `points` through bridge `mode`; the points are full boxes (one agent process each)
    or replayers (the measuring host alone in one process, the others in `replayer_procs`)."""
    light = points_as == "replayers"
    is_janus = mode in ("janus", "janus-light")
    run_dir = workdir / f"{mode}-{points}-{points_as}"
    run_dir.mkdir(parents=True)
    http_port = free_port()
    ctl = run_dir / "controller.toml"
    ctl.write_text(tomli_w.dumps({
        "controller": {"id": f"bench-{mode}-{points}", "data_dir": str(run_dir / "controller")},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
        "http": {"host": "127.0.0.1", "port": http_port},
        "bridge": {"width": size[0], "height": size[1], "fps": FPS, **(
            {"backend": "janus", "janus_url": janus.url, "janus_api_secret": janus.api_secret}
            if is_janus and janus is not None else {}), **(
            {"light_hold": 3600.0} if mode == "janus-light" else {})},
        "log": {"level": "warning"},
        "archive": {"trial_identity": True},  # a benchmark, not a deployment
    }))
    logs = run_dir / "logs"
    logs.mkdir()
    children: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        children.append(child)
        return child

    letter = "l" if mode == "janus-light" else mode[0]
    devices = [f"b{points}-{letter}{points_as[0]}-{n:02d}" for n in range(points + 1)]
    outputs: list[Path] = []
    try:
        bridge = spawn("controller", _python(
            "bridge", "--config", str(ctl), "--mode", "shared" if is_janus else mode,
            *(["--light", str(light_points)] if mode == "janus-light" else [])))
        boxes = []
        if light:
            shares = [devices[1 + k::replayer_procs] for k in range(replayer_procs)]
            groups = [devices[:1], *(share for share in shares if share)]
            for k, group in enumerate(groups):
                outputs.append(run_dir / f"replay-{k}.json")
                boxes.append(spawn(f"replay-{k}", _python(
                    "replay", "--port", str(broker.port), "--devices", ",".join(group),
                    "--out", str(outputs[-1]), *(["--measure"] if k == 0 else []))))
        for n, device in enumerate(devices if not light else []):
            cfg = run_dir / f"{device}.toml"
            cfg.write_text(tomli_w.dumps({
                "device": {"id": device, "name": f"Điểm {n}",
                           "kind": "central" if n == 0 else "commune"},
                "board": {"profile": "sim"},
                "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
                "state": {"dir": str(run_dir / device)},
                "call": {"qos_interval": 2.0},
                "recording": {"received": box_recording},
                "log": {"level": "warning"},
            }))
            install_recipients(run_dir / device)
            outputs.append(run_dir / f"{device}.json")
            boxes.append(spawn(device, _python("box", "--config", str(cfg), "--out",
                                               str(outputs[-1]))))
        token = run_dir / "controller" / "admin.token"
        deadline = time.monotonic() + 120
        while not token.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        client = ApiClient(f"http://127.0.0.1:{http_port}", token.read_text().strip())
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiError):
                online = {d["id"] for d in client.get("/api/devices") if d["online"]}
                if online >= set(devices):
                    break
            time.sleep(0.5)
        session = client.call("POST", "/api/sessions", body={
            "host": devices[0], "invite": devices[1:], "auto_join": True})["session"]
        while time.monotonic() < deadline:
            state = client.get(f"/api/sessions/{session['id']}")
            if all(p["state"] == "live" for p in state["points"]):
                break
            time.sleep(0.5)
        # A bridge that cannot keep every point live (they drop and rejoin) is measured all
        # the same: the points it lost show as the minimum fps.
        not_live = sorted(p["device"] for p in state["points"] if p["state"] != "live")
        if len(not_live) == len(devices):
            tail = (logs / "controller.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{mode} N={points}: no point went live\n" + "\n".join(tail))
        # Live at the bridge is not yet receiving (Janus: the view leg comes after the
        # publisher's): replay points say how many of them see the composed picture.
        receiving = len(devices)
        wait_until = time.monotonic() + 60
        while light and time.monotonic() < wait_until:
            receiving = sum(_receiving(output) for output in outputs)
            if receiving >= len(devices):
                break
            time.sleep(0.5)
        time.sleep(3.0)  # past the first key frames and the jitter buffers' start
        processes = [psutil.Process(c.pid) for c in [bridge, *boxes]]
        if is_janus and janus is not None and janus.process is not None:
            processes.append(psutil.Process(janus.process.pid))
        load = os.getloadavg()[0]
        before = [p.cpu_times() for p in processes]
        start, started = time.time(), time.monotonic()
        time.sleep(window)
        end, elapsed = time.time(), time.monotonic() - started
        load_after = os.getloadavg()[0]
        after = [p.cpu_times() for p in processes]
        cpu = [((a.user + a.system) - (b.user + b.system)) / elapsed * 100
               for a, b in zip(after, before, strict=True)]
        janus_cpu = cpu.pop() if len(cpu) > len(boxes) + 1 else 0.0
        for box in boxes:
            box.send_signal(signal.SIGTERM)
        for box in boxes:
            box.wait(30)
        seen: dict[str, Any] = {}
        for output in outputs:
            data = json.loads(output.read_text())
            seen |= data if light else {output.stem: data}
        fps, ages = [], []
        for device in devices:
            data = seen.get(device, {"arrivals": [], "ages": []})
            fps.append(sum(1 for t in data["arrivals"] if start <= t < end) / (end - start))
            ages += [age for t, age in data["ages"] if start <= t < end]
        ages.sort()
        sealed = sum(1 for device in devices
                     for path in (run_dir / device).glob("recordings/*/*")
                     if path.name != "manifest.jsonl")
        point_cpu = cpu[1:]
        return {
            "points": points, "bridge": mode, "points_as": points_as,
            "fps_min": round(min(fps), 2), "fps_median": round(statistics.median(fps), 2),
            "latency_p50_ms": ages[len(ages) // 2] if ages else None,
            "latency_p95_ms": ages[int(len(ages) * 0.95)] if ages else None,
            "latency_samples": len(ages),
            # Points not live when the window opened (120 s after the session did).
            "not_live_at_start": len(not_live),
            "not_receiving_at_start": len(devices) - receiving,
            "bridge_cpu_per_point": round((cpu[0] + janus_cpu) / len(devices), 1),
            "bridge_cpu": round(cpu[0] + janus_cpu, 1),
            "controller_cpu": round(cpu[0], 1),
            "janus_cpu": round(janus_cpu, 1),
            "light_points": light_points if mode == "janus-light" else 0,
            "light_on": "bench_light_on" in (logs / "controller.log").read_text(errors="replace"),
            # Full boxes: the mean box process. Replayers: the measuring host's process, and
            # the others' processes per point they carry.
            "box_cpu": round(point_cpu[0] if light else statistics.mean(point_cpu), 1),
            "replayer_cpu_per_point": round(sum(point_cpu[1:]) / points, 1) if light else None,
            "box_recording": None if light else box_recording,
            "box_segments": sealed,
            "load_1min": round(load, 2),
            "load_1min_after": round(load_after, 2),
        }
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.session", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    bridge = sub.add_parser("bridge")
    bridge.add_argument("--config", type=Path, required=True)
    bridge.add_argument("--mode", choices=["shared", "naive"], required=True)
    bridge.add_argument("--light", type=int, default=0)
    box = sub.add_parser("box")
    box.add_argument("--config", type=Path, required=True)
    box.add_argument("--out", type=Path, required=True)
    replay = sub.add_parser("replay")
    replay.add_argument("--port", type=int, required=True)
    replay.add_argument("--devices", required=True)
    replay.add_argument("--out", type=Path, required=True)
    replay.add_argument("--measure", action="store_true")
    parser.add_argument("--points", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--composed", default="1280x720",
                        help="size of the composed picture (the bridge's width x height)")
    parser.add_argument("--bridges", nargs="+",
                        choices=["shared", "naive", "janus", "janus-light"],
                        help="default: janus (where it can run: root, Debian's janus), "
                             "shared, naive")
    parser.add_argument("--points-as", nargs="+", choices=["replayers", "boxes"],
                        default=["replayers"],
                        help="light replay points, full box processes, or both in turn")
    parser.add_argument("--boxes-points", type=int, nargs="+",
                        help="with --points-as ... boxes: the N to run with full boxes "
                             "(default: the --points)")
    parser.add_argument("--replayer-procs", type=int, default=2,
                        help="processes carrying the replay points besides the measuring host")
    parser.add_argument("--workdir", type=Path,
                        help="keep every process's log here (default: a temporary directory)")
    parser.add_argument("--box-recording", choices=["copy", "reencode"], default="copy")
    parser.add_argument("--light-points", type=int, default=1,
                        help="janus-light: the points moved onto the light rendition")
    args = parser.parse_args(argv)
    if args.role == "bridge":
        asyncio.run(run_bridge(args.config, args.mode, args.light))
        return 0
    if args.role == "box":
        asyncio.run(run_box(args.config, args.out))
        return 0
    if args.role == "replay":
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(run_replayers(args.port, args.devices.split(","), args.measure, args.out))
        return 0
    logging.basicConfig(level=logging.WARNING)
    if args.bridges is None:
        args.bridges = ["janus", "shared", "naive"] if netns.available() and janus_present() \
            else ["shared", "naive"]
    runs = [(points, points_as) for points_as in args.points_as
            for points in (args.boxes_points or args.points
                           if points_as == "boxes" else args.points)]
    width, _, height = args.composed.partition("x")
    size = (int(width), int(height))
    results: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="tiepdan-bench-")))
        broker = stack.enter_context(Mosquitto(workdir / "broker"))
        janus = None
        if "janus" in args.bridges or "janus-light" in args.bridges:
            ns = stack.enter_context(netns.namespace("tben", index=7))
            janus = stack.enter_context(Janus(workdir / "janus", netns=ns))
        for points, points_as in runs:
            for mode in args.bridges:
                try:
                    result = measure(workdir, broker, points, mode, args.window, size, janus,
                                     args.box_recording, points_as, args.replayer_procs,
                                     args.light_points)
                except RuntimeError as exc:  # one bridge failing must not lose the others
                    first = str(exc).splitlines()[0]
                    print(f"N={points:<2} {mode:6} {points_as:9}  FAILED: {first}", flush=True)
                    failures.append({"points": points, "bridge": mode, "points_as": points_as,
                                     "error": first})
                    continue
                results.append(result)
                print(f"N={points:<2} {mode:6} {points_as:9}  fps min/median "
                      f"{result['fps_min']:5.1f} / {result['fps_median']:5.1f}  latency p50/p95 "
                      f"{result['latency_p50_ms']} / {result['latency_p95_ms']} ms "
                      f"({result['latency_samples']})  not live / receiving at start "
                      f"{result['not_live_at_start']} / {result['not_receiving_at_start']}  "
                      f"bridge {result['bridge_cpu']:5.1f}% "
                      f"({result['bridge_cpu_per_point']:.1f}%/point, janus "
                      f"{result['janus_cpu']:.1f}%, controller {result['controller_cpu']:.1f}%)  "
                      f"measuring/box {result['box_cpu']:.1f}%  "
                      f"replayers {result['replayer_cpu_per_point']}%/point  "
                      f"load {result['load_1min']} -> {result['load_1min_after']}", flush=True)
    ratios: dict[str, dict[str, float | None]] = {}
    for points, points_as in runs:
        by_mode = {r["bridge"]: r for r in results
                   if r["points"] == points and r["points_as"] == points_as}
        naive = by_mode.get("naive")
        key = f"{points}-{points_as}"
        ratios[key] = {}
        for mode in ("shared", "janus"):
            if mode not in by_mode or naive is None:
                continue
            mine = by_mode[mode]
            ratios[key][f"bridge_cpu_per_point_{mode}_over_naive"] = round(
                mine["bridge_cpu_per_point"] / naive["bridge_cpu_per_point"], 2) \
                if naive["bridge_cpu_per_point"] else None
            ratios[key][f"fps_min_{mode}_over_naive"] = round(
                mine["fps_min"] / naive["fps_min"], 2) if naive["fps_min"] else None
        full, lighter = by_mode.get("janus"), by_mode.get("janus-light")
        if full is not None and lighter is not None and full["controller_cpu"]:
            ratios[key]["controller_cpu_janus-light_over_janus"] = round(
                lighter["controller_cpu"] / full["controller_cpu"], 2)
        print(f"N={points:<2} {points_as} ratios (same run): {ratios[key]}")
    holding = {f"{mode}-{points_as}": max(
        (r["points"] for r in results if r["bridge"] == mode and r["points_as"] == points_as
         and r["fps_min"] >= 14.5), default=None)
        for mode in args.bridges for points_as in args.points_as}
    print(f"largest N holding 14.5 fps at every point: {holding}")
    print(json.dumps({"bench": "session", "camera": "640x360@15",
                      "composed": f"{args.composed}@{FPS}", "results": results,
                      "ratios": ratios, "largest_n_at_14_5_fps": holding,
                      "failed": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
