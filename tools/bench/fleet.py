"""Fleet benchmark: N agents against one Mosquitto and the controller.

The agents are the real `Agent` class, each with its own MQTT connection, hosted many to a
process (the lightweight mode: a quiet panel and canned sensor readings instead of gpiozero
threads and psutil) and spread over `--procs` processes, so that at 10,000 agents no single
event loop of the simulator is what the figures measure; how late each of those loops woke
while commands were measured is printed too, so a reader can tell when the simulator, not the
broker or the controller, made the tail. The controller runs as its own `tiepdan-controller
run` process, the broker with a deployed broker's persistence (Debian's 1800 s autosave).
Printed: connected count and time to connect, telemetry messages/s arriving at the controller,
the share of every health report sent that the controller received (counted after the agents
stop), command round trip p50/p99 (a requester -> broker -> agent -> broker -> requester) and,
paired with it at random order over the same seconds, the raw Mosquitto publish -> subscribe
round trip as the floor; CPU and memory of the broker, the controller and each agents process.

    python -m tiepdan.tools.bench.fleet --agents 1000
    python -m tiepdan.tools.bench.fleet --agents 10000 --pings 1000 --spread 20

Goal (issue 16): at 10,000 agents, command p99 within 3x the floor's p99 and every health
report delivered. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
import tomli_w

from tiepdan.board.profile import load_profile
from tiepdan.board.sensors import Readings
from tiepdan.controller.cli.client import ApiClient, ApiError
from tiepdan.controller.fleet.commands import CommandClient
from tiepdan.firmware import protocol
from tiepdan.firmware.agent.agent import Agent
from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.core.mqtt import Inbound, LinkSettings, MqttLink
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.server_process import stop_process

log = logging.getLogger(__name__)


# Fewer agents per event loop means shorter stalls when a loop runs a burst of reports: at
# 2,500 a loop spent ~1 % of the time more than 10 ms late, at 1,250 ~0.2 % (issue 16).
AGENTS_PER_PROCESS = 1250


class QuietPanel:
    """A panel without GPIO threads, so thousands of agents fit in one process."""

    def __init__(self) -> None:
        self._leds: dict[str, str] = {}

    def on_button(self, callback: Callable[[str], None]) -> None:
        pass

    def on_power_fail(self, callback: Callable[[bool], None]) -> None:
        pass

    def power_lost(self) -> bool | None:
        return None

    def set_led(self, name: str, pattern: str) -> None:
        self._leds[name] = pattern

    def led_states(self) -> dict[str, str]:
        return dict(self._leds)

    def close(self) -> None:
        pass


class CannedSensors:
    """Fixed readings; `reads` counts them, which is the number of health reports sent (the
    agent reads its sensors once per report, and only while connected). `hold()` makes every
    later read wait, so that a count taken after it is final: no report read after the count
    can still arrive at the controller."""

    reads = 0
    _lock = threading.Lock()  # agents read their sensors in worker threads
    _open = threading.Event()
    _open.set()

    def read(self) -> Readings:
        CannedSensors._open.wait()
        with CannedSensors._lock:
            CannedSensors.reads += 1
        return Readings(cpu_temp_c=48.0, throttled=0, under_voltage=False, cpu_percent=7.0,
                      mem_percent=31.0, disk_free_bytes=20 * 2**30, disk_total_bytes=32 * 2**30,
                      load1=0.3, uptime_s=1000.0, clock_synced=True)

    @classmethod
    def hold(cls) -> None:
        cls._open.clear()

    @classmethod
    def release(cls) -> None:
        cls._open.set()


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def agent_config(workdir: Path, port: int, n: int, interval: float) -> AgentConfig:
    return msgspec.convert({
        "device": {"id": f"bench-{n:05d}", "name": f"Bench {n}"},
        "board": {"profile": "sim"},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": False, "keepalive": 30,
                 "reconnect_min": 1.0, "reconnect_max": 10.0},
        "telemetry": {"interval": interval},
        "state": {"dir": str(workdir / "boxes" / f"bench-{n:05d}")},
        "log": {"level": "warning"},
    }, AgentConfig)


def host_agents(workdir: Path, port: int, first: int, count: int, interval: float,
                ready: Any, stop: Any, sent: Any, probe: Any, lags: Any) -> None:
    """A worker process hosting `count` agents until `stop` is set; `sent` gets the number of
    health reports they published, `lags` this process's event-loop lag while `probe` is set."""
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING)
    profile = load_profile("sim")

    async def run() -> None:
        agents = []
        tasks = []
        for n in range(first, first + count):
            agent = Agent(agent_config(workdir, port, n, interval), profile=profile,
                          panel=QuietPanel(), sensors=CannedSensors())
            agents.append(agent)
            tasks.append(asyncio.create_task(agent.run()))
            # One agent at a time, as a real fleet's boxes come up independently: agents started
            # in a batch share the phase of their health timer and report in bursts that block
            # this loop for tens of milliseconds, which a ping then measures.
            await asyncio.sleep(0.001)
        # Thousands of agents' long-lived objects make each full collection a pause of the whole
        # loop; a real box hosts one agent, so the simulator keeps them out of the collector.
        gc.freeze()
        ready.set()
        lag = asyncio.create_task(loop_lag(probe, lags))
        await asyncio.to_thread(stop.wait)
        lag.cancel()
        CannedSensors.hold()
        await asyncio.sleep(1.0)  # reports read before the hold are published meanwhile
        sent.value = CannedSensors.reads
        for agent in agents:
            agent.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        CannedSensors.release()  # the reads held in worker threads, for their answers

    asyncio.run(run())


async def loop_lag(probe: Any, lags: Any, period: float = 0.005) -> None:
    """How late this loop wakes while `probe` is set: the wait a command arriving at one of its
    agents would have before being read. Kept as [p99 of the wakes, the longest, the share of
    time spent more than 10 ms late] (ms, ms, %): a stall is one late wake, but a ping landing
    in it waits in proportion to its length, so the share says more than the percentile."""
    samples: list[float] = []
    began = 0.0
    while True:
        if not probe.is_set():
            samples.clear()
            await asyncio.sleep(0.05)
            began = time.monotonic()
            continue
        start = time.monotonic()
        await asyncio.sleep(period)
        samples.append(max(0.0, time.monotonic() - start - period))
        if len(samples) % 100 == 0:
            stalled = sum(s - 0.010 for s in samples if s > 0.010)
            lags[:] = [percentile(samples, 99) * 1e3, max(samples) * 1e3,
                       100 * stalled / max(time.monotonic() - began, 1e-3)]


async def round_trips(port: int, devices: list[str], count: int,
                      spread: float) -> tuple[list[float], list[float]]:
    """Command round trips (requester -> broker -> agent -> broker -> requester, a `ping`)
    and the floor, interleaved one for one so both see the same load: the same request ->
    reply -> response shape between two plain MQTT 5 connections that do nothing but echo.
    The pairs are paced evenly over `spread` seconds: a tail is a property of the steady
    state, and a burst of pings over one second samples whatever happened in that second."""
    loop = asyncio.get_running_loop()
    waiting: dict[bytes, asyncio.Future[float]] = {}
    links: list[MqttLink] = []

    def answer(message: Inbound) -> None:
        links[1].publish("bench/res", message.payload, qos=1)

    def got(message: Inbound) -> None:
        future = waiting.get(message.payload)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    for client_id, handler in (("bench-floor-req", got), ("bench-floor-echo", answer)):
        links.append(MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id=client_id,
                                           session_expiry=0), on_message=handler))
    requester = MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id="bench-requester",
                                      session_expiry=0),
                         on_message=lambda m: rpc.on_response(
                             protocol.parse_topic(m.topic).device, m))
    rpc = CommandClient(requester, "bench-requester")
    links.append(requester)
    tasks = [asyncio.create_task(link.run()) for link in links]
    for link in links:
        await link.wait_connected(10)
    await links[0].subscribe(("bench/res", 1))
    await links[1].subscribe(("bench/req", 1))
    await requester.subscribe((rpc.response_filter, 1))
    commands: list[float] = []
    floor: list[float] = []
    failures = 0

    async def command(device: str) -> None:
        nonlocal failures
        start = time.perf_counter()
        response = await rpc.request(device, "ping", timeout=10)
        if response.ok:
            commands.append(time.perf_counter() - start)
        else:
            failures += 1

    async def echo(i: int) -> None:
        key = f"{i}".encode()
        waiting[key] = loop.create_future()
        start = time.perf_counter()
        links[0].publish("bench/req", key, qos=1)
        async with asyncio.timeout(10):
            floor.append(await waiting[key] - start)
        del waiting[key]

    order = random.Random(7)
    began = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, began + i * spread / count - time.monotonic()))
        device = devices[(i * 7919) % len(devices)]
        # A coin decides which of the pair goes first: a broker stall that starts between two
        # pairs is met by whichever is sent next, so a fixed order would give it to one side.
        if order.random() < 0.5:
            await command(device)
            await echo(i)
        else:
            await echo(i)
            await command(device)
    for link in links:
        await link.stop()
    await asyncio.gather(*tasks)
    if failures:
        log.warning("bench_command_failures count=%d", failures)
    return commands, floor


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(agents: int, procs: int, interval: float, window: float, pings: int, spread: float,
        autosave: int = 1800, keep: bool = False) -> dict[str, Any]:
    raise_fd_limit()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < agents + 200:  # the broker holds one socket per agent, and inherits this limit
        raise SystemExit(f"open files limit {nofile} is too low for {agents} agents "
                         "(raise the hard limit: ulimit -Hn)")
    workdir = Path(tempfile.mkdtemp(prefix="tiepdan-bench-"))
    # As deployed: no max_connections (unlimited), Debian's autosave_interval (1800 s).
    broker = Mosquitto(workdir / "broker", autosave_interval=autosave)
    broker.start()
    http_port = free_port()
    ctl_config = workdir / "controller.toml"
    ctl_config.write_text(tomli_w.dumps({
        "controller": {"id": "central", "data_dir": str(workdir / "controller")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": False},
        "http": {"host": "127.0.0.1", "port": http_port},
        "log": {"level": "warning"},
        "archive": {"trial_identity": True},  # a benchmark, not a deployment
    }))
    controller = subprocess.Popen(
        [sys.executable, "-m", "tiepdan.controller", "--config", str(ctl_config), "run"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "controller.log").open("wb"))
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    probe = ctx.Event()
    lags: list[Any] = []
    workers = []
    sent: list[Any] = []
    ready: list[Any] = []
    stopped = False
    try:
        token = workdir / "controller" / "admin.token"
        deadline = time.monotonic() + 30
        while not token.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        api = ApiClient(f"http://127.0.0.1:{http_port}", token.read_text().strip())
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        share = -(-agents // procs)
        for k in range(procs):
            first, count = k * share, min(share, agents - k * share)
            if count <= 0:
                break
            # Kept referenced: a spawned child opens these by name after start() returns.
            ready.append(ctx.Event())
            sent.append(ctx.Value("q", 0))
            lags.append(ctx.Array("d", 3))
            worker = ctx.Process(target=host_agents, args=(workdir, broker.port, first, count,
                                                           interval, ready[-1], stop, sent[-1],
                                                           probe, lags[-1]))
            worker.start()
            workers.append(worker)
        online = 0
        deadline = time.monotonic() + max(60, agents / 20)
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiError):
                online = api.get("/api/stats")["online"]
            if online >= agents:
                break
            if any(w.exitcode is not None for w in workers):
                raise SystemExit("an agents process died; see its traceback above")
            time.sleep(0.5)
        connect_s = time.monotonic() - started

        # Telemetry rate at the controller, and where the CPU goes, over the same window.
        watched = {"broker": psutil.Process(broker.process.pid),  # type: ignore[union-attr]
                   "controller": psutil.Process(controller.pid)}
        watched |= {f"agents-{i}": psutil.Process(w.pid) for i, w in enumerate(workers)}
        for p in watched.values():
            p.cpu_percent()
        before = api.get("/api/stats")["received"].get("tele", 0)
        time.sleep(window)
        after = api.get("/api/stats")["received"].get("tele", 0)
        cpu = {name: round(p.cpu_percent(), 1) for name, p in watched.items()}
        memory = {name: round(p.memory_info().rss / 2**20, 1) for name, p in watched.items()}
        broker_files = watched["broker"].num_fds()

        devices = [f"bench-{n:05d}" for n in range(agents)]
        probe.set()
        commands, floor = asyncio.run(round_trips(broker.port, devices, pings, spread))
        probe.clear()
        load_after = os.getloadavg()[0]

        # Delivery over the whole run: every health report the agents sent against every one
        # the controller received, counted once the agents have stopped.
        stop.set()
        for worker in workers:
            worker.join(120)
        stopped = True
        time.sleep(1.0)
        loop_lags = [[round(v, 1) for v in lag[:]] for lag in lags]
        received = api.get("/api/stats")["received"].get("tele", 0)
        published = sum(value.value for value in sent)
        p50, p99 = percentile(commands, 50) * 1e3, percentile(commands, 99) * 1e3
        f50, f99 = percentile(floor, 50) * 1e3, percentile(floor, 99) * 1e3
        if keep:
            print(f"work folder: {workdir}", file=sys.stderr)
        return {
            "benchmark": "fleet",
            "agents": agents,
            "agent_processes": len(workers),
            "connected": online,
            "connect_s": round(connect_s, 1),
            "telemetry_interval_s": interval,
            "telemetry_msgs_per_s": round((after - before) / window, 1),
            "telemetry_expected_per_s": round(agents / interval, 1),
            "telemetry_sent": published,
            "telemetry_received": received,
            "telemetry_delivered_percent": round(100 * received / published, 2)
            if published else None,
            "command_rtt_p50_ms": round(p50, 2),
            "command_rtt_p99_ms": round(p99, 2),
            "command_samples": len(commands),
            "command_spread_s": spread,
            "broker_autosave_interval_s": autosave,
            "floor_rtt_p50_ms": round(f50, 2),
            "floor_rtt_p99_ms": round(f99, 2),
            "command_vs_floor_p50": round(p50 / f50, 2),
            "command_vs_floor_p99": round(p99 / f99, 2),
            "agents_loop_late_p99_max_ms_stalled_pct": loop_lags,
            "goal_p99_within_3x_floor": p99 <= 3 * f99,
            "goal_telemetry_all_delivered": bool(published) and received >= published,
            "cpu_percent": cpu,
            "rss_mib": memory,
            "mean_agent_rss_kib": round(sum(v for k, v in memory.items() if k.startswith("agents"))
                                        * 1024 / max(agents, 1), 1),
            "broker_open_files": broker_files,
            "open_files_limit": nofile,
            "load_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        }
    finally:
        stop.set()
        for worker in workers:
            if not stopped:
                worker.join(60)
            if worker.is_alive():
                worker.kill()
        try:
            stop_process(controller, 15)
        finally:
            broker.stop()  # whatever happened above: no broker outlives the benchmark
            if not keep:  # 10,000 boxes' state folders
                shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.fleet",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--procs", type=int, default=None,
                        help="processes hosting the agents (default: one per 1,250 agents)")
    parser.add_argument("--interval", type=float, default=10.0, help="telemetry interval, s")
    parser.add_argument("--window", type=float, default=20.0,
                        help="seconds over which telemetry and CPU are measured")
    parser.add_argument("--pings", type=int, default=300, help="command round trips sampled")
    parser.add_argument("--spread", type=float, default=20.0,
                        help="seconds over which the round trips are paced evenly")
    parser.add_argument("--autosave", type=int, default=1800,
                        help="the broker's autosave_interval, s (Debian's default: 1800)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, the boxes' state) and print it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    procs = args.procs or -(-args.agents // AGENTS_PER_PROCESS)
    result = run(args.agents, procs, args.interval, args.window, args.pings, args.spread,
                 args.autosave, args.keep)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0 if result["connected"] >= args.agents else 1


if __name__ == "__main__":
    sys.exit(main())
