"""What the privilege separation of updates costs: the same update through `tiepdan-updater`
(its own process, asked over its Unix socket, progress relayed) and through the same updater
code inside the asking process, in one run.

A real bundle of this tree (padded with a dependency wheel of random bytes to `--mb`, so the
download and the unpacking dominate as on a box), a real TUF repository served over HTTP on
loopback by a separate process, fresh A/B roots and fresh TUF caches per run. Printed per path:
fetch (TUF refresh, download, verify) and install (unpack into the spare slot, flush) seconds,
medians of `--runs`; then the round trip of one request on the socket; the ratio is separated /
in-process for fetch + install. The last line is one JSON object.

    python -m tiepdan.tools.bench.updater --mb 40 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from tiepdan.firmware.agent.config import AgentConfig
from tiepdan.firmware.update import boot, channel
from tiepdan.firmware.update.remote import RemoteUpdater
from tiepdan.firmware.update.updater import Updater
from tiepdan.ota.bundle import build_bundle, build_wheel
from tiepdan.ota.repository import Keyring, UpdateRepository
from tiepdan.tools.broker import free_port

SOURCE = Path(__file__).resolve().parents[2]
VERSION = "1.1.0"


def padding_wheel(out: Path, megabytes: int) -> Path:
    """A valid wheel of incompressible bytes: stands in for numpy, av, aiortc and the rest."""
    info = "tiepdan_bench_padding-1.0.dist-info"
    files = {f"tiepdan_bench_padding/blob{i}.bin": os.urandom(1 << 20) for i in range(megabytes)}
    files[f"{info}/METADATA"] = b"Metadata-Version: 2.1\nName: tiepdan-bench-padding\n" \
                                b"Version: 1.0\n"
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = b""
    wheel = out / "tiepdan_bench_padding-1.0-py3-none-any.whl"
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    wheel.write_bytes(buffer.getvalue())
    return wheel


def fake_root(path: Path) -> Path:
    """A box root committed on slot a at 1.0.0 (enough for the updater's policy and install)."""
    (path / "slots" / "a").mkdir(parents=True)
    (path / "slots" / "a" / "slot.json").write_text('{"version": "1.0.0"}')
    boot.write_state(path, {"committed": "a", "trial": None, "outcome": None})
    boot.point_current(path, "a")
    return path


def settings(work: Path, root: Path, repo: UpdateRepository, socket_path: str) -> dict[str, Any]:
    trusted = work / "trusted-root.json"
    trusted.write_bytes(repo.trusted_root())
    return {"device": {"id": "bench-updater", "name": "bench"},
            "state": {"dir": str(work / "state")}, "log": {"level": "warning"},
            "ota": {"root": str(root), "trusted_root": str(trusted), "clock": "trust",
                    "updater_socket": socket_path, "updater_state_dir": str(work / "updater"),
                    "agent_user": str(os.getuid()), "http_timeout": 120.0}}


async def one_update(updater: Updater | RemoteUpdater, url: str) -> tuple[float, float]:
    request = channel.Fetch(job="bench", target=f"tiepdan-{VERSION}.tar", version=VERSION,
                            repository=url)
    started = time.perf_counter()
    await updater.fetch(request, lambda _: None)
    fetched = time.perf_counter()
    await updater.install(channel.Install(request.target))
    return fetched - started, time.perf_counter() - fetched


async def in_process(base: Path, repo: UpdateRepository, url: str) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(dir=base))
    root = fake_root(work / "root")
    config = msgspec.convert(settings(work, root, repo, ""), AgentConfig)
    return await one_update(Updater(config, work / "updater"), url)


async def separated(base: Path, repo: UpdateRepository, url: str,
                    round_trips: int) -> tuple[float, float, float]:
    work = Path(tempfile.mkdtemp(dir=base))
    root = fake_root(work / "root")
    socket_path = work / "updater.sock"
    config = work / "box.toml"
    config.write_text(tomli_w.dumps(settings(work, root, repo, str(socket_path))))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tiepdan.firmware.update.daemon", "--config", str(config),
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                raise SystemExit("tiepdan-updater did not start")
            await asyncio.sleep(0.05)
        remote = RemoteUpdater(str(socket_path))
        fetch, install = await one_update(remote, url)
        started = time.perf_counter()
        for _ in range(round_trips):
            await remote.mark_reported()
        return fetch, install, (time.perf_counter() - started) / round_trips
    finally:
        process.terminate()
        await process.wait()


async def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    out = base / "build"
    wheel = build_wheel(SOURCE, VERSION, out / "wheel")
    bundle = build_bundle(wheel, out / "bundles", [padding_wheel(out / "deps", args.mb)])
    repo = UpdateRepository(base / "repo", Keyring())
    repo.initialise(base / "keys", [base / "offline"])
    repo.add_bundle(bundle)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
        str(repo.path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.sleep(1.0)
        local: list[tuple[float, float]] = []
        remote: list[tuple[float, float]] = []
        trips: list[float] = []
        for _ in range(args.runs):  # interleaved, so both paths see the same machine load
            local.append(await in_process(base, repo, url))
            fetch, install, trip = await separated(base, repo, url, args.round_trips)
            remote.append((fetch, install))
            trips.append(trip)
    finally:
        server.terminate()
        await server.wait()

    def median(rows: list[tuple[float, float]], i: int) -> float:
        return round(statistics.median(r[i] for r in rows), 3)

    figures = {"benchmark": "updater", "bundle_mb": round(bundle.stat().st_size / 1e6, 1),
               "runs": args.runs,
               "in_process_fetch_s": median(local, 0), "in_process_install_s": median(local, 1),
               "separated_fetch_s": median(remote, 0), "separated_install_s": median(remote, 1),
               "round_trip_ms": round(statistics.median(trips) * 1000, 2)}
    total_local = figures["in_process_fetch_s"] + figures["in_process_install_s"]
    total_remote = figures["separated_fetch_s"] + figures["separated_install_s"]
    figures["ratio"] = round(total_remote / total_local, 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiepdan.tools.bench.updater",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=40, help="bundle padding, MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tiepdan-bench-updater-"))
    try:
        figures = asyncio.run(run(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"bundle: {figures['bundle_mb']} MB, {figures['runs']} runs (medians)")
    print(f"in-process updater: fetch {figures['in_process_fetch_s']} s, "
          f"install {figures['in_process_install_s']} s")
    print(f"tiepdan-updater (separate process, Unix socket): fetch "
          f"{figures['separated_fetch_s']} s, install {figures['separated_install_s']} s")
    print(f"one request on the socket (connect, SO_PEERCRED, reply): "
          f"{figures['round_trip_ms']} ms")
    print(f"ratio (separated / in-process, fetch + install): {figures['ratio']}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
