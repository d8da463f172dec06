"""OTA test harness: bundles of real builds, a TUF repository over HTTP with fault knobs, box
roots, supervised box processes (systemd's Restart=always, in small), job plumbing."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web

from tests.support import ROOT, Observer, agent_settings
from tiepdan.firmware import protocol
from tiepdan.firmware.update import boot
from tiepdan.firmware.update.slots import install_image
from tiepdan.ota.bundle import SOURCE_ENTRIES, build_bundle, build_wheel
from tiepdan.ota.repository import Keyring, UpdateRepository
from tiepdan.tools.broker import Mosquitto, free_port
from tiepdan.tools.server_process import kill_process, stop_process

# name -> (version, {relative file: (old text, new text)})
VARIANTS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "old": ("0.9.0", {}),
    "base": ("1.0.0", {}),
    "good": ("1.1.0", {}),
    "crash": ("1.2.0", {"firmware/__main__.py": (
        "    args = parser.parse_args(argv)\n",
        "    args = parser.parse_args(argv)\n"
        "    raise RuntimeError('test build 1.2.0 crashes on start')\n")}),
    "unhealthy": ("1.3.0", {"board/selftest.py": (
        "async def _camera(profile: BoardProfile, label: str) -> str:\n",
        "async def _camera(profile: BoardProfile, label: str) -> str:\n"
        "    raise RuntimeError('no frame from the camera (test build 1.3.0)')\n")}),
    "silent": ("1.4.0", {"firmware/update/client.py": (
        "                await self._health_check(trial)\n",
        "                await asyncio.Event().wait()  # test build: never gives a verdict\n")}),
}


def build_variants(out: Path, names: list[str]) -> dict[str, Path]:
    """Build each variant's bundle from a patched copy of this tree, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> tuple[str, Path]:
        version, patches = VARIANTS[name]
        source = ROOT
        if patches:
            source = out / f"src-{name}"
            source.mkdir(parents=True)
            for entry in SOURCE_ENTRIES:
                src = ROOT / entry
                if src.is_dir() and not src.is_symlink():
                    shutil.copytree(src, source / entry, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, source / entry, follow_symlinks=False)
            for rel, (old, new) in patches.items():
                path = source / rel
                text = path.read_text()
                assert old in text, f"{rel} no longer contains the patched line"
                path.write_text(text.replace(old, new, 1))
        wheel = build_wheel(source, version, out / f"wheel-{name}")
        return name, build_bundle(wheel, out / "bundles")

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, names))


def version_of(name: str) -> str:
    return VARIANTS[name][0]


def make_repository(tmp: Path) -> UpdateRepository:
    keys = tmp / "keys"
    repo = UpdateRepository(tmp / "repo", Keyring())
    repo.initialise(keys, [tmp / "offline-1", tmp / "offline-2"], root_keys=3,
                    root_threshold=2)
    return repo


@dataclass
class Hit:
    path: str
    range: str
    status: int
    sent: int


@dataclass
class RepoServer:
    """The repository directory over HTTP on loopback, in its own thread, with fault knobs
    for target files: `rate` (bytes/s), `extra` (bytes appended: larger than declared)."""

    directory: Path
    rate: float | None = None
    extra: bytes = b""
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RepoServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def target_hits(self) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith("targets/")]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        path = (self.directory / rel).resolve()
        if not path.is_relative_to(self.directory.resolve()) or not path.is_file():
            self.hits.append(Hit(rel, "", 404, 0))
            return web.Response(status=404)
        data = path.read_bytes()
        is_target = rel.startswith("targets/")
        if is_target:
            data += self.extra
        asked = request.headers.get("Range", "")
        start = 0
        if asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[6:-1])
            if start >= len(data):
                self.hits.append(Hit(rel, asked, 416, 0))
                return web.Response(status=416)
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(data) - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        hit = Hit(rel, asked, response.status, 0)
        self.hits.append(hit)
        chunk = 16 * 1024
        for offset in range(start, len(data), chunk):
            await response.write(data[offset:offset + chunk])
            hit.sent += len(data[offset:offset + chunk])
            if is_target and self.rate:
                await asyncio.sleep(chunk / self.rate)
        await response.write_eof()
        return response


def box_settings(tmp: Path, broker: Mosquitto, device: str, root: Path, repo: UpdateRepository,
                 **ota: Any) -> dict[str, Any]:
    trusted = tmp / f"{device}-trusted-root.json"
    trusted.write_bytes(repo.trusted_root())
    clock = tmp / f"{device}-clock"
    (clock / "run/systemd/timesync").mkdir(parents=True, exist_ok=True)
    (clock / "run/systemd/timesync/synchronized").touch()
    return agent_settings(tmp, broker, device, ota={
        "root": str(root), "trusted_root": str(trusted), "clock_root": str(clock),
        "retry_delay": 0.2, "download_attempts": 2, "health_timeout": 60.0,
        "boot_attempts": 2, "updater_socket": "", **ota})


def new_box_root(tmp: Path, device: str, bundle: Path) -> Path:
    root = tmp / f"{device}-root"
    install_image(root, bundle)
    return root


def write_box_config(tmp: Path, settings: dict[str, Any]) -> Path:
    path = tmp / f"{settings['device']['id']}.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


def unprivileged(user: str = "nobody") -> list[str]:
    """A command prefix that runs what follows as `user`, with its own group and no others."""
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


class UpdaterProcess:
    """`<root>/current/bin/tiepdan-updater` as its unit runs it (as root, the test's user)."""

    def __init__(self, root: Path, config: Path, socket: Path,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = env or {}
        self.config = config
        self.socket = socket
        self.log = config.with_name(config.stem + "-updater.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UpdaterProcess:
        listening = self.output().count("updater_listening")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.root / boot.CURRENT / boot.UPDATER), "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd="/",
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        deadline = time.monotonic() + 60
        while self.output().count("updater_listening") == listening:
            assert self.proc.poll() is None, f"updater exited: {self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"updater not listening: {self.output()}"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class SupervisedBox:
    """Runs `<root>/current/bin/tiepdan-agent` as systemd would (Restart=always), optionally
    under a command `prefix` (e.g. `unprivileged()`, as the unit's User= would)."""

    def __init__(self, root: Path, config: Path, restart_delay: float = 0.3,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = env or {}
        self.config = config
        self.prefix = prefix or []
        self.log = config.with_suffix(".log")
        self.restart_delay = restart_delay
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> SupervisedBox:
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        while True:
            with self._lock:  # never start a process that stop() cannot see
                if self._stop.is_set():
                    return
                with self.log.open("ab") as out:
                    self.proc = subprocess.Popen(
                        [*self.prefix, str(self.root / boot.CURRENT / boot.LAUNCHER), "--config",
                         str(self.config)], stdout=out, stderr=subprocess.STDOUT, env=env,
                        cwd="/")
                proc = self.proc
            self.starts += 1
            proc.wait()
            if self._stop.wait(self.restart_delay):
                return

    def _halt(self, kill: bool) -> None:
        with self._lock:
            self._stop.set()
            proc = self.proc
        if kill:
            kill_process(proc)
        else:
            stop_process(proc, 15)
        if self._thread is not None:
            self._thread.join(20)
            assert not self._thread.is_alive(), "supervisor thread did not stop"

    def kill9(self) -> None:
        """kill -9 the agent, and keep it down (the caller restarts it with `start`)."""
        self._halt(kill=True)

    def stop(self) -> None:
        self._halt(kill=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def current(self) -> str | None:
        return boot.current_slot(self.root)

    def version(self) -> str | None:
        slot = self.current()
        return boot.slot_version(self.root, slot) if slot else None


def job(job_id: str, target: str, version: str, repository: str, **extra: Any
        ) -> protocol.JobDocument:
    return protocol.JobDocument(job=job_id, target=target, version=version,
                                repository=repository, **extra)


async def notify(observer: Observer, device: str, document: protocol.JobDocument | None) -> None:
    payload = b"" if document is None else protocol.encode(
        protocol.JobNotify(ts=protocol.now_ms(), job=document))
    await observer.link.publish(protocol.job_notify_topic(device), payload, qos=1, retain=True)


def updates(observer: Observer, device: str, job_id: str) -> list[protocol.JobUpdate]:
    topic = protocol.job_update_topic(device, job_id)
    found = [protocol.decode(m.payload, protocol.JobUpdate)
             for m in observer.messages if m.topic == topic]
    return sorted(found, key=lambda u: u.seq)


def final(observer: Observer, device: str, job_id: str) -> protocol.JobUpdate | None:
    for update in reversed(updates(observer, device, job_id)):
        if update.status in protocol.TERMINAL_JOB_STATUSES:
            return update
    return None


async def wait_final(observer: Observer, device: str, job_id: str, timeout: float = 60.0,
                     box: SupervisedBox | None = None) -> protocol.JobUpdate:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = final(observer, device, job_id)
        if found is not None:
            return found
        await asyncio.sleep(0.1)
    seen = [(u.status, u.step, u.reason) for u in updates(observer, device, job_id)]
    detail = box.output()[-4000:] if box is not None else ""
    raise AssertionError(f"no final status for {job_id} within {timeout}s; saw {seen}\n{detail}")


async def watch_updates(observer: Observer, device: str = "+") -> None:
    await observer.link.subscribe((protocol.device_filter(device, "jobs/+/update"), 1))
