"""The updater as its own process, owning the slots, and the agent as an unprivileged user.

A real `tiepdan-updater` (from the box's slot, as root like its unit), a real agent process
dropped to `nobody` (setpriv, as the unit's User= would), a real Mosquitto and a TUF repository
over HTTP: an update completes end to end; the agent's user cannot write the code it boots
next; the updater refuses unsigned and tampered targets and anyone but the agent's uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.ota.harness import (
    RepoServer,
    SupervisedBox,
    UpdaterProcess,
    box_settings,
    job,
    notify,
    unprivileged,
    updates,
    wait_final,
    watch_updates,
)
from tests.support import Observer, eventually
from tiepdan.firmware.update import boot, channel, slots
from tiepdan.firmware.update.remote import RemoteUpdater
from tiepdan.ota.repository import UpdateRepository
from tiepdan.tools.broker import Mosquitto

pytestmark = pytest.mark.timeout(300)

DEVICE = "xa-priv"
NOBODY = pwd.getpwnam("nobody")
# The box's interpreter, which any user may run (this suite's own may sit under root's home),
# with this environment's packages standing in for the dependency wheels an artifact carries.
BOX_PYTHON = "/usr/bin/python3"
BOX_ENV = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(
    (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])))}


@pytest.fixture
def work() -> Iterator[Path]:
    """A folder `nobody` can traverse (pytest's own temporary folders are root's alone)."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another uid needs root")
    probe = subprocess.run([BOX_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, check=False)
    if probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"{BOX_PYTHON} is not this Python's version (the slots run on it)")
    path = Path(tempfile.mkdtemp(prefix="tupd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def install_box(work: Path, bundle: Path) -> Path:
    """`tiepdan-install` as the image builder runs it, with a careless umask: the slots must
    still come out writable by their owner (root) alone."""
    root = work / "opt-tiepdan"
    subprocess.run([sys.executable, "-m", "tiepdan.firmware.update.install", str(bundle),
                    "--root", str(root), "--python", BOX_PYTHON], check=True,
                   capture_output=True,
                   preexec_fn=lambda: os.umask(0o000))
    return root


def write_config(work: Path, broker: Mosquitto, repo: UpdateRepository, root: Path,
                 agent_user: str, **ota: Any) -> tuple[Path, Path]:
    socket_path = work / "run" / "updater.sock"
    settings = box_settings(work, broker, DEVICE, root, repo, updater_socket=str(socket_path),
                            updater_state_dir=str(work / "updater"), agent_user=agent_user,
                            **ota)
    state = work / DEVICE
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    config = work / f"{DEVICE}.toml"
    config.write_text(tomli_w.dumps(settings))
    config.chmod(0o644)
    return config, socket_path


@contextlib.contextmanager
def updater(root: Path, config: Path, socket_path: Path) -> Iterator[UpdaterProcess]:
    process = UpdaterProcess(root, config, socket_path, env=BOX_ENV).start()
    try:
        yield process
    finally:
        process.stop()


ATTEMPTS = r"""
import errno, json, os, sys
root = sys.argv[1]
tried = {}
def attempt(name, action):
    try:
        action()
        tried[name] = "written"
    except OSError as exc:
        tried[name] = errno.errorcode.get(exc.errno, str(exc.errno))
for slot in sys.argv[2:]:
    base = os.path.join(root, "slots", slot)
    attempt(f"{slot}: rewrite the code", lambda: open(
        os.path.join(base, "site", "tiepdan", "__init__.py"), "a").write("# owned\n"))
    attempt(f"{slot}: add a module", lambda: open(
        os.path.join(base, "site", "sitecustomize.py"), "w").write("# owned\n"))
    attempt(f"{slot}: replace the launcher", lambda: os.replace(
        os.path.join(base, "slot.json"), os.path.join(base, "bin", "tiepdan-agent")))
    attempt(f"{slot}: change the boot code", lambda: os.chmod(
        os.path.join(base, "boot", "tiepdan_boot.py"), 0o666))
    attempt(f"{slot}: remove the slot", lambda: os.rename(base, base + ".gone"))
attempt("plant a spare slot", lambda: os.mkdir(os.path.join(root, "slots", ".b.new")))
attempt("write the boot state", lambda: open(os.path.join(root, "boot.json"), "w").write("{}"))
attempt("lock the boot state", lambda: open(os.path.join(root, ".lock"), "a"))
def repoint():
    os.symlink("slots/b", os.path.join(root, ".current.tmp"))
    os.replace(os.path.join(root, ".current.tmp"), os.path.join(root, "current"))
attempt("re-point current", repoint)
print(json.dumps(tried))
"""


def writes_as_nobody(root: Path, *slot_names: str) -> dict[str, str]:
    done = subprocess.run([*unprivileged(), BOX_PYTHON, "-c", ATTEMPTS, str(root),
                           *slot_names], capture_output=True, text=True, check=True, cwd="/")
    result: dict[str, str] = json.loads(done.stdout)
    return result


def assert_refused(tried: dict[str, str]) -> None:
    assert tried, "nothing was attempted"
    written = {what: how for what, how in tried.items() if how not in ("EACCES", "EPERM")}
    assert not written, f"the agent's user could: {written}"


def test_the_agents_user_cannot_write_the_slots_or_the_boot_pointer(
        work: Path, bundles: dict[str, Path]) -> None:
    root = install_box(work, bundles["base"])
    before = (root / "boot.json").read_bytes(), os.readlink(root / "current")
    tried = writes_as_nobody(root, "a")
    assert_refused(tried)
    assert len(tried) == 9
    assert ((root / "boot.json").read_bytes(), os.readlink(root / "current")) == before
    assert not (root / "slots" / "a" / "site" / "sitecustomize.py").exists()
    # The same user may read and run it (that is all the agent needs).
    version = subprocess.run([*unprivileged(), str(root / "current" / boot.LAUNCHER),
                              "--version"], capture_output=True, text=True, check=True,
                             env={**os.environ, **BOX_ENV})
    assert version.stdout.strip() == "tiepdan 1.0.0"


@contextlib.asynccontextmanager
async def controller_side(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with Observer(broker, "test-controller") as obs:
        await watch_updates(obs)
        yield obs


OUTCOMES = {
    "good": ("1.1.0", "succeeded", "b", "health check passed"),
    # Crashes at every start: the updater counts the launcher's attempts and rolls back.
    "crash": ("1.2.0", "rolled_back", "a", "no health verdict after 2 start(s)"),
    # Fails its self-test: the agent asks the updater for the rollback.
    "unhealthy": ("1.3.0", "rolled_back", "a", "self-test failed: camera"),
    # Never answers: the updater's guard rolls back and stops the agent.
    "silent": ("1.4.0", "rolled_back", "a", "no health verdict within 10 s of starting"),
}


@pytest.mark.parametrize("variant", sorted(OUTCOMES))
async def test_an_update_with_the_updater_as_its_own_process_and_an_unprivileged_agent(
        variant: str, work: Path, broker: Mosquitto, repo: UpdateRepository,
        server: RepoServer, bundles: dict[str, Path]) -> None:
    version, status, slot, reason = OUTCOMES[variant]
    repo.add_bundle(bundles[variant])
    root = install_box(work, bundles["base"])
    config, socket_path = write_config(work, broker, repo, root, "nobody",
                                       health_timeout=10.0)
    with updater(root, config, socket_path) as process:
        box = SupervisedBox(root, config, prefix=unprivileged(), env=BOX_ENV).start()
        try:
            async with controller_side(broker) as obs:
                target = f"tiepdan-{version}.tar"
                await notify(obs, DEVICE, job("j1", target, version, server.url))
                result = await wait_final(obs, DEVICE, "j1", 180, box)
        finally:
            await asyncio.to_thread(box.stop)
        output = box.output() + process.output()
        assert result.status == status, (result, output[-4000:])
        assert "PermissionError" not in box.output(), box.output()[-4000:]
        assert result.reason is not None and reason in result.reason, result.reason
        state = boot.read_state(root)
        assert box.current() == slot and state["committed"] == slot and state["trial"] is None
        assert result.running == ("1.1.0" if variant == "good" else "1.0.0")
        steps = [u.step for u in updates(obs, DEVICE, "j1")]
        assert "downloading" in steps and "restarting" in steps
        assert process.alive()
    # The updater downloaded and verified it, not the agent; every slot is still root's alone.
    assert list((work / "updater" / "bundles").iterdir())
    assert not (work / DEVICE / "ota").exists()
    logged = process.output()
    assert "updater_request op=fetch" in logged
    # The launcher, as nobody, could not count its start itself: it asked the updater.
    assert "updater_request op=started pid=" in logged and f"uid={NOBODY.pw_uid}" in logged
    assert ("updater_request op=commit" in logged) == (variant == "good")
    assert ("updater_request op=rollback" in logged) == (variant == "unhealthy")
    assert ("ota_guard_rollback" in logged) == (variant == "silent")
    assert_refused(writes_as_nobody(root, "a", "b"))


async def test_an_agent_killed_mid_download_leaves_a_partial_the_updater_resumes(
        work: Path, broker: Mosquitto, repo: UpdateRepository, server: RepoServer,
        bundles: dict[str, Path]) -> None:
    """kill -9 of the agent: the updater sees its caller hang up, stops the download and keeps
    what it has; the restarted agent asks again and the updater resumes with a Range request."""
    repo.add_bundle(bundles["good"])
    size = bundles["good"].stat().st_size
    server.rate = size / 6  # about six seconds for the whole bundle
    root = install_box(work, bundles["base"])
    config, socket_path = write_config(work, broker, repo, root, "nobody")
    partial = work / "updater" / "partial"
    with updater(root, config, socket_path) as process:
        async with controller_side(broker) as obs:
            box = SupervisedBox(root, config, prefix=unprivileged(), env=BOX_ENV).start()
            try:
                await notify(obs, DEVICE, job("j1", "tiepdan-1.1.0.tar", "1.1.0", server.url))
                await eventually(lambda: any(p.stat().st_size > size // 4
                                             for p in partial.glob("*.part")),
                                 60, what="a quarter of the bundle in the updater's partial")
                box.kill9()
                await eventually(lambda: "updater_fetch_abandoned" in process.output(), 60,
                                 what="the updater noticing its caller is gone")
                kept = max(p.stat().st_size for p in partial.glob("*.part"))
                assert 0 < kept < size
                # Still slow: the first connection closes at the updater's next chunk, and a
                # fast server would fill the socket's buffers with the rest before that.
                box.start()
                result = await wait_final(obs, DEVICE, "j1", 120, box)
            finally:
                await asyncio.to_thread(box.stop)
        assert result.status == "succeeded", (result, process.output()[-3000:])
        assert "PermissionError" not in box.output(), box.output()[-4000:]
        assert process.alive()
    assert boot.current_slot(root) == "b" and boot.read_state(root)["committed"] == "b"
    # Resumed where the kept partial ended, not from zero; only the rest was sent again.
    first, *rest = server.target_hits()
    assert first.status == 200 and first.sent < size
    assert [h.status for h in rest] == [206]
    start = int(rest[0].range[6:-1])
    assert start >= kept and rest[0].sent == size - start


async def test_a_trial_start_without_the_updater_runs_the_committed_code_then_rolls_back(
        work: Path, broker: Mosquitto, repo: UpdateRepository,
        bundles: dict[str, Path]) -> None:
    """The updater is down when the agent starts a version on trial: the launcher, which may
    not count the start itself, runs the committed slot's code and leaves the state alone; the
    updater, once up, gives the trial its deadline and rolls it back."""
    root = install_box(work, bundles["base"])
    slots.install(root, bundles["good"], python=BOX_PYTHON)
    boot.switch(root, "b", version="1.1.0", job="j1", attempts=2, health_timeout=5.0)
    config, socket_path = write_config(work, broker, repo, root, "nobody", health_timeout=5.0)
    before = boot.read_state(root)
    started = await asyncio.to_thread(
        subprocess.run, [*unprivileged(), str(root / "current" / boot.LAUNCHER), "--config",
                         str(config), "--version"],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
        env={**os.environ, **BOX_ENV})
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "tiepdan 1.0.0"  # slot a's code, not the trial's
    assert f"updater at {socket_path} unavailable" in started.stderr
    assert boot.read_state(root) == before and boot.current_slot(root) == "b"
    with updater(root, config, socket_path) as process:
        await eventually(lambda: boot.read_state(root)["trial"] is None, 60,
                         what="the updater rolling the unguarded trial back")
        assert "ota_guard_rollback" in process.output()
    state = boot.read_state(root)
    assert boot.current_slot(root) == "a" and state["committed"] == "a"
    assert state["outcome"]["result"] == "rolled_back"
    assert "no health verdict within 5 s" in state["outcome"]["reason"]


@pytest.fixture
def as_agent(work: Path, broker: Mosquitto, repo: UpdateRepository,
             bundles: dict[str, Path]) -> Iterator[tuple[Path, Path, UpdaterProcess]]:
    """An updater that takes this test process (root) for the agent."""
    root = install_box(work, bundles["base"])
    config, socket_path = write_config(work, broker, repo, root, "0")
    with updater(root, config, socket_path) as process:
        yield root, socket_path, process


def ask_raw(socket_path: Path, line: bytes, prefix: list[str] | None = None) -> dict[str, Any]:
    """One request line as-is, from this process or one run under `prefix`; the reply."""
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "try:\n"
            "    s.sendall(sys.stdin.buffer.read())\n"
            "    s.shutdown(socket.SHUT_WR)\n"
            "except OSError:\n"
            "    pass  # a refused peer is answered (and dropped) before it has sent all\n"
            "sys.stdout.buffer.write(s.makefile('rb').read())\n")
    done = subprocess.run([*(prefix or []), BOX_PYTHON, "-c", code, str(socket_path)],
                          input=line, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    frames = [json.loads(x) for x in done.stdout.splitlines()]
    assert frames and frames[-1]["op"] == "reply", frames
    reply: dict[str, Any] = frames[-1]
    return reply


async def test_the_updater_refuses_unsigned_and_tampered_targets_even_from_the_agent(
        as_agent: tuple[Path, Path, UpdaterProcess], repo: UpdateRepository,
        server: RepoServer, bundles: dict[str, Path]) -> None:
    root, socket_path, process = as_agent
    repo.add_bundle(bundles["good"])
    agent = RemoteUpdater(str(socket_path))

    def fetch(target: str, version: str = "1.1.0") -> channel.Fetch:
        return channel.Fetch(job="j1", target=target, version=version, repository=server.url)

    # Not in the signed metadata (the bundle file is even served: it is not signed).
    (repo.targets_dir / "tiepdan-9.9.9.tar").write_bytes(bundles["good"].read_bytes())
    with pytest.raises(channel.Refused) as refused:
        await agent.fetch(fetch("tiepdan-9.9.9.tar", "9.9.9"), lambda _: None)
    assert refused.value.status == "rejected"
    assert "not in the signed targets metadata" in refused.value.reason
    # Nothing fetched by the updater: an install or a switch of it is refused too.
    for ask in (agent.install(channel.Install("tiepdan-9.9.9.tar")),
                agent.switch("b", "tiepdan-9.9.9.tar", "j1")):
        with pytest.raises(channel.Refused) as refused:
            await ask
        assert refused.value.status == "failed"
    # A request that names a hash is not a request of this channel.
    reply = ask_raw(socket_path, b'{"op": "install", "target": "tiepdan-1.1.0.tar", '
                                 b'"sha256": "' + b"0" * 64 + b'"}\n')
    assert not reply["ok"] and reply["error"]["code"] == "bad_request"
    assert "sha256" in reply["error"]["message"]

    # Tampered on the server: same length, one byte changed.
    served = next((repo.targets_dir).glob("*.tiepdan-1.1.0.tar"))
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    with pytest.raises(channel.Refused) as refused:
        await agent.fetch(fetch("tiepdan-1.1.0.tar"), lambda _: None)
    assert refused.value.status == "failed"
    assert "verification failed" in refused.value.reason
    assert "LengthOrHashMismatchError" in refused.value.reason
    with pytest.raises(channel.Refused):
        await agent.install(channel.Install("tiepdan-1.1.0.tar"))
    assert not (root / "slots" / "b").exists()
    assert boot.current_slot(root) == "a" and boot.read_state(root)["trial"] is None

    # Bad requests get clear errors, are logged, and the updater goes on answering.
    for line, code in ((b"not json\n", "bad_request"), (b'{"op": "format_disk"}\n', "bad_request"),
                       (b'{"op": "commit", "slot": "../../etc"}\n', "bad_request"),
                       (b"x" * (channel.MAX_LINE + 10) + b"\n", "bad_request"),
                       (b'{"op": "commit"', "bad_request")):
        reply = ask_raw(socket_path, line)
        assert not reply["ok"] and reply["error"]["code"] == code, (line[:40], reply)
    assert process.alive()
    assert process.output().count("updater_bad_request") >= 5
    served.write_bytes(bundles["good"].read_bytes())  # repaired: the same updater now takes it
    fetched = await agent.fetch(fetch("tiepdan-1.1.0.tar"), lambda _: None)
    assert fetched == {"target": "tiepdan-1.1.0.tar", "version": "1.1.0"}
    # The updater restarts between the fetch and the install (the window may be hours away):
    # a bare install is refused, one with the job's fields verifies the cached bundle again.
    process.stop()
    process.start()
    with pytest.raises(channel.Refused, match="was not fetched and verified by the updater"):
        await agent.install(channel.Install("tiepdan-1.1.0.tar"))
    served.write_bytes(bytes(data))  # tampered again: the cached copy is what gets checked
    installed = await agent.install(channel.Install("tiepdan-1.1.0.tar", job="j1",
                                                    version="1.1.0", repository=server.url))
    assert installed == "b" and boot.slot_version(root, "b") == "1.1.0"


async def test_a_request_from_another_uid_is_refused(
        as_agent: tuple[Path, Path, UpdaterProcess]) -> None:
    root, socket_path, process = as_agent
    before = (root / "boot.json").read_bytes()
    for line in (b'{"op": "rollback", "slot": "a", "reason": "x"}\n',
                 b'{"op": "started", "slot": "a"}\n', b'{"op": "reported"}\n'):
        reply = ask_raw(socket_path, line, prefix=unprivileged())
        assert not reply["ok"] and reply["error"]["code"] == "forbidden", reply
        assert f"uid {NOBODY.pw_uid} may not use the updater" in reply["error"]["message"]
    assert (root / "boot.json").read_bytes() == before
    assert process.output().count("updater_bad_request") == 3
    # The agent's own uid is answered.
    assert ask_raw(socket_path, b'{"op": "reported"}\n')["ok"]


def test_a_peer_is_known_by_the_kernels_credentials() -> None:
    from tiepdan.firmware.update.daemon import peer

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer(left) == (os.getpid(), os.getuid(), os.getgid())
