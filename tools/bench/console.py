"""Console benchmark: page time with a large registry, live-update fan-out, browser join time.

    python -m tiepdan.tools.bench.console --boxes 1000 --viewers 50 --joins 5

A real controller (Mosquitto, SQLite, the HTTP app with its auth middleware) in this process.
1. Pages: the fleet table with every box in the registry, one province's slice, a box page and
   the sessions calendar, each fetched `--rounds` times by a signed-in admin; the floor is the
   controller's cheapest JSON route (`/api/health`) in the same run, so the ratio says what
   rendering and auth cost over a bare round trip.
2. Fan-out: `--viewers` signed-in SSE streams on the fleet; a box's health is published over
   MQTT and the time until every viewer has it is measured (the hub batches twice a second, so
   half a second is the designed ceiling); then every box at once, until every viewer has all.
3. Join: two simulated boxes in a live session; Debian's Chromium (fake camera and microphone)
   signs in, opens the session and clicks "join"; from the click to the first composed frame
   the browser decodes (requestVideoFrameCallback), `--joins` times.

Prints the figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from argon2 import PasswordHasher

from tiepdan.board.panel import Panel
from tiepdan.board.profile import load_profile
from tiepdan.controller.config import ControllerConfig
from tiepdan.controller.people.users import Users
from tiepdan.controller.service import Controller
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.tools.broker import Mosquitto, free_port

log = logging.getLogger(__name__)
PASSWORD = "mat-khau-do-hieu-nang"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def controller_config(workdir: Path, broker: Mosquitto) -> ControllerConfig:
    return msgspec.convert({
        "controller": {"data_dir": str(workdir / "controller")},
        "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "log": {"level": "warning"},
        "bridge": {"width": 640, "height": 360, "fps": 10, "bitrate": 600_000},
        "archive": {"record_bridge": False},
    }, ControllerConfig)


async def announce(c: Controller, count: int) -> list[str]:
    devices = [f"xa-{n:04d}" for n in range(count)]
    for n, device in enumerate(devices):
        birth = protocol.Birth(seq=1, ts=protocol.now_ms(), firmware="1.0.0", board="sim",
                               boot_id="b", keepalive=60, point=protocol.Point(
                                   kind="commune", name=f"UBND xã {n}",
                                   province=f"p-{n % 34:02d}", commune=f"c-{n:04d}"))
        await c.link.publish(protocol.birth_topic(device), protocol.encode(birth), retain=True)
    deadline = time.monotonic() + 60
    while sum(1 for d in devices if c.registry.get(d)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("boxes did not all register")
        await asyncio.sleep(0.1)
    return devices


async def signed_in(base: str) -> aiohttp.ClientSession:
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[base])
    http = aiohttp.ClientSession(base, cookie_jar=jar)
    async with http.get("/login") as form:
        token = re.search(r'name="login_csrf" value="([^"]+)"', await form.text())
    async with http.post("/login", data={"name": "quantri", "password": PASSWORD,
                                         "login_csrf": token[1] if token else ""},
                         allow_redirects=False) as reply:
        if reply.status != 303:
            raise RuntimeError(f"login failed: {reply.status}")
    return http


async def timed_get(http: aiohttp.ClientSession, path: str, rounds: int,
                    headers: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        async with http.get(path, headers=headers) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"{path}: HTTP {reply.status}")
        times.append((time.perf_counter() - start) * 1000)
    return times


async def bench_pages(c: Controller, base: str, devices: list[str],
                      rounds: int) -> dict[str, Any]:
    http = await signed_in(base)
    try:
        await timed_get(http, "/fleet", 2)  # warm up templates
        result: dict[str, Any] = {}
        for name, path, headers in (
                ("floor_api_health", "/api/health", None),
                ("fleet_all", "/fleet", None),
                ("fleet_province", "/fleet?province=p-03", None),
                ("box", f"/fleet/{devices[len(devices) // 2]}", None),
                ("sessions", "/sessions", None),
                ("api_devices", "/api/devices", {"Authorization": f"Bearer {c.token}"})):
            times = await timed_get(http, path, rounds, headers)
            result[name] = {"p50_ms": round(statistics.median(times), 2),
                            "p95_ms": round(percentile(times, 95), 2)}
        floor = result["floor_api_health"]
        for name in ("fleet_all", "fleet_province", "box", "sessions"):
            for p in ("p50", "p95"):
                result[name][f"ratio_to_floor_{p}"] = round(
                    result[name][f"{p}_ms"] / max(floor[f"{p}_ms"], 0.01), 1)
        return result
    finally:
        await http.close()


async def bench_fanout(c: Controller, base: str, devices: list[str], viewers: int,
                       updates: int) -> dict[str, Any]:
    sessions = [await signed_in(base) for _ in range(viewers)]
    seen: list[dict[tuple[str, float], float]] = [{} for _ in range(viewers)]
    ready = [asyncio.Event() for _ in range(viewers)]

    async def watch(i: int) -> None:
        async with sessions[i].get("/live?topics=fleet") as stream:
            ready[i].set()
            event = ""
            async for raw in stream.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "devices":
                    now = time.perf_counter()
                    for row in json.loads(line[6:]):
                        seen[i][(row["id"], row["cpu"] or -1.0)] = now

    tasks = [asyncio.create_task(watch(i)) for i in range(viewers)]
    try:
        await asyncio.gather(*(e.wait() for e in ready))
        await asyncio.sleep(0.6)

        async def health(device: str, cpu: float) -> None:
            h = protocol.Health(ts=protocol.now_ms(), uptime_s=1, cpu_percent=cpu,
                                mem_percent=10, disk_free_bytes=1, disk_total_bytes=2, load1=0)
            await c.link.publish(protocol.tele_topic(device, "health"), protocol.encode(h))

        async def until_all(keys: list[tuple[str, float]], timeout: float = 60) -> float:
            deadline = time.perf_counter() + timeout
            while not all(all(k in s for k in keys) for s in seen):
                if time.perf_counter() > deadline:
                    raise RuntimeError("viewers did not all receive the updates")
                await asyncio.sleep(0.005)
            return max(s[k] for s in seen for k in keys)

        single = []
        for n in range(updates):
            cpu = 10.0 + n
            start = time.perf_counter()
            await health(devices[0], cpu)
            single.append((await until_all([(devices[0], cpu)]) - start) * 1000)
        start = time.perf_counter()
        for device in devices:
            await health(device, 99.0)
        done = await until_all([(d, 99.0) for d in devices])
        burst = done - start
        return {
            "viewers": viewers,
            "one_update_to_all_p50_ms": round(statistics.median(single), 1),
            "one_update_to_all_p95_ms": round(percentile(single, 95), 1),
            "all_boxes_to_all_viewers_s": round(burst, 2),
            "events_delivered_per_s": round(len(devices) * viewers / burst),
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for http in sessions:
            await http.close()


async def bench_join(c: Controller, base: str, broker: Mosquitto, workdir: Path,
                     joins: int) -> dict[str, Any]:
    from gpiozero.pins.mock import MockFactory

    from tiepdan.tools.chromium import Chromium, write_tone, write_y4m

    profile = load_profile("sim")
    agents, tasks = [], []
    for device in ("pt-host", "pt-1"):
        config = msgspec.convert({
            "device": {"id": device, "name": f"UBND {device}"},
            "mqtt": {"host": broker.host, "port": broker.port, "tls": False},
            "state": {"dir": str(workdir / device)}, "log": {"level": "warning"},
            "call": {"video_bitrate": 300_000}}, AgentConfig)
        agent = Agent(config, profile=profile, panel=Panel(profile, pin_factory=MockFactory()))
        agents.append(agent)
        tasks.append(asyncio.create_task(agent.run()))
    try:
        deadline = time.monotonic() + 30
        while not all(c.registry.get(a.device) for a in agents):
            if time.monotonic() > deadline:
                raise RuntimeError("boxes did not register")
            await asyncio.sleep(0.1)
        session = await c.sessions.open("pt-host", ["pt-1"], auto_join=True)
        while not all(a.call.state == "live" for a in agents):
            if time.monotonic() > deadline + 30:
                raise RuntimeError("boxes did not go live")
            await asyncio.sleep(0.1)
        camera, mic = workdir / "leader.y4m", workdir / "leader.wav"
        write_y4m(camera, "Lãnh đạo")
        write_tone(mic, 1160.0)
        times = []
        async with Chromium(workdir, camera=camera, microphone=mic) as browser:
            await browser.login(base, "quantri", PASSWORD)
            for _ in range(joins):
                await browser.get(f"{base}/sessions/{session.id}")
                await browser.click("join-button")
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    took = await browser.js(
                        "const j = window.tiepdanJoin; return j && j.firstFrameAt !== null ? "
                        "j.firstFrameAt - j.startedAt : null")
                    if took is not None:
                        times.append(float(took))
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("no composed frame in the browser")
                await browser.click("leave-button")
                await asyncio.sleep(1.0)
        return {"joins": len(times), "click_to_first_frame_p50_ms": round(
            statistics.median(times)), "max_ms": round(max(times))}
    finally:
        for agent in agents:
            agent.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from unittest import mock

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker, \
            mock.patch("aioice.ice.get_host_addresses",
                       lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]):
        workdir = Path(tmp)
        c = Controller(controller_config(workdir, broker))
        c.people.users = Users(c.db, FAST)
        c.people.users.add("quantri", "admin", PASSWORD)
        ready = asyncio.Event()
        task = asyncio.create_task(c.run(ready))
        await ready.wait()
        await c.link.wait_connected(10)
        base = f"http://127.0.0.1:{c.http_port}"
        try:
            devices = await announce(c, args.boxes)
            result: dict[str, Any] = {"boxes": args.boxes}
            result["pages"] = await bench_pages(c, base, devices, args.rounds)
            result["fanout"] = await bench_fanout(c, base, devices, args.viewers, args.updates)
            if args.joins:
                result["join"] = await bench_join(c, base, broker, workdir, args.joins)
            return result
        finally:
            c.request_stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(20):
                    await task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--viewers", type=int, default=50)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--joins", type=int, default=5, help="0: skip the browser")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    pages = result["pages"]
    print(f"pages with {args.boxes} boxes in the registry (ms, p50 / p95):")
    for name, figures in pages.items():
        print(f"  {name:18} {figures['p50_ms']:8.1f} / {figures['p95_ms']:8.1f}")

    print(f"  fleet (all) / floor: p50 {pages['fleet_all']['ratio_to_floor_p50']}x, "
          f"p95 {pages['fleet_all']['ratio_to_floor_p95']}x")
    f = result["fanout"]
    print(f"live fan-out to {f['viewers']} viewers: one update to all p50 "
          f"{f['one_update_to_all_p50_ms']} ms, p95 {f['one_update_to_all_p95_ms']} ms; every "
          f"box to every viewer {f['all_boxes_to_all_viewers_s']} s "
          f"({f['events_delivered_per_s']} events/s)")
    if "join" in result:
        j = result["join"]
        print(f"browser join, click to first composed frame: p50 "
              f"{j['click_to_first_frame_p50_ms']} ms, max {j['max_ms']} ms ({j['joins']} joins)")
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
