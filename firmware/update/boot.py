"""A/B boot state and the slot launcher. Standard library only, on purpose.

Every slot carries a copy of this file, written by the version that installed the slot, and its
`bin/tiepdan-agent` runs `launch()` before any of the slot's own code is imported. So the code
that counts boot attempts, enforces the health deadline and rolls back is the code of a version
that has already proven itself, never the new version's.

Layout under the root (default /opt/tiepdan):

    slots/a/, slots/b/           bin/tiepdan-agent, boot/tiepdan_boot.py, site/, slot.json
    current -> slots/a           switched by renaming a new symlink over it
    boot.json                    committed slot, trial in progress, last outcome
    .lock                        flock for every change of the two above

A trial is entered by `switch()`; each start of the trial slot consumes one attempt; the agent
of the new version has `commit()` called once its health check passes, or `rollback()` when it
fails; a guard rolls back when no verdict came in time; a launch that finds the attempts used
up rolls back before importing anything of the slot.

Every change is made by whoever may write the root: on a box that is the updater process
(`updater.py`), and the launcher, running as the agent's user, asks it over its socket
(`started`); in development the launcher changes the state itself and forks the guard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

STATE = "boot.json"
CURRENT = "current"
SLOTS = ("a", "b")
LAUNCHER = "bin/tiepdan-agent"
UPDATER = "bin/tiepdan-updater"
UPDATER_SOCKET = "/run/tiepdan-updater/updater.sock"


# -- state ------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(root: Path) -> dict[str, Any]:
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    state.setdefault("committed", current_slot(root))
    state.setdefault("trial", None)
    state.setdefault("outcome", None)
    return state


def write_state(root: Path, state: dict[str, Any]) -> None:
    write_file(root / STATE, json.dumps(state, indent=1, sort_keys=True).encode())


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temporary file, fsync, rename, fsync of the folder: old or new after a power cut."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_slot(root: Path) -> str | None:
    try:
        target = os.readlink(root / CURRENT)
    except OSError:
        return None
    name = Path(target).name
    return name if name in SLOTS else None


def point_current(root: Path, slot: str) -> None:
    """Atomically re-point `current` (a new symlink renamed over the old one)."""
    tmp = root / f".{CURRENT}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"slots/{slot}", tmp)
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def slot_version(root: Path, slot: str) -> str | None:
    try:
        info = json.loads((root / "slots" / slot / "slot.json").read_text())
    except (OSError, ValueError):
        return None
    version = info.get("version") if isinstance(info, dict) else None
    return version if isinstance(version, str) else None


def _outcome(trial: dict[str, Any], result: str, reason: str) -> dict[str, Any]:
    return {"job": trial.get("job"), "slot": trial.get("slot"), "version": trial.get("version"),
            "from_version": trial.get("from_version"), "result": result, "reason": reason,
            "ts": time.time(), "reported": False}


# -- transitions (each under the lock) --------------------------------------------------------


def switch(root: Path, slot: str, *, version: str, job: str | None, attempts: int,
           health_timeout: float, checkpoint: Callable[[str], None] | None = None) -> None:
    """Enter a trial of `slot`: record it first, then re-point `current`.

    A crash between the two leaves `current` on the committed slot with a trial that never
    started; the launcher then clears it as interrupted.
    """
    with locked(root):
        state = read_state(root)
        committed = state["committed"]
        if state["trial"] is not None:
            raise RuntimeError(f"a trial of slot {state['trial']['slot']} is in progress")
        if committed == slot or committed is None:
            raise RuntimeError(f"cannot try slot {slot}: committed slot is {committed}")
        state["trial"] = {"slot": slot, "version": version, "job": job,
                          "attempts_left": attempts, "attempts": attempts,
                          "health_timeout": health_timeout,
                          "from_version": slot_version(root, committed), "since": time.time()}
        write_state(root, state)
        if checkpoint is not None:
            checkpoint("recorded")
        point_current(root, slot)


def commit(root: Path, slot: str) -> bool:
    """The trial slot passed its health check: it becomes the committed slot."""
    with locked(root):
        state = read_state(root)
        trial = state["trial"]
        if trial is None or trial["slot"] != slot or current_slot(root) != slot:
            return False
        state["committed"] = slot
        state["trial"] = None
        state["outcome"] = _outcome(trial, "succeeded", "health check passed")
        write_state(root, state)
        return True


def rollback(root: Path, slot: str, reason: str) -> bool:
    """Abandon the trial of `slot`: `current` goes back to the committed slot."""
    with locked(root):
        return _rollback_locked(root, read_state(root), slot, reason)


def _rollback_locked(root: Path, state: dict[str, Any], slot: str, reason: str) -> bool:
    trial = state["trial"]
    if trial is None or trial["slot"] != slot or state["committed"] is None:
        return False
    point_current(root, state["committed"])
    state["trial"] = None
    state["outcome"] = _outcome(trial, "rolled_back", reason)
    write_state(root, state)
    return True


def mark_reported(root: Path) -> None:
    with locked(root):
        state = read_state(root)
        if state["outcome"] is not None:
            state["outcome"]["reported"] = True
            write_state(root, state)


# -- the launcher -----------------------------------------------------------------------------


def begin(root: Path, slot: str) -> tuple[bool, float | None]:
    """Boot accounting for a start of `slot`, under the lock: whether to run the current slot
    instead, and the health deadline to guard (a trial start), if any."""
    with locked(root):
        state = read_state(root)
        trial = state["trial"]
        if trial is not None and trial["slot"] == slot:
            if current_slot(root) != slot:
                return True, None
            if trial["attempts_left"] <= 0:
                _rollback_locked(root, state, slot, (
                    f"no health verdict after {trial['attempts']} start(s): the new version "
                    "crashed or hung on start"))
                return True, None
            trial["attempts_left"] -= 1
            write_state(root, state)
            return False, float(trial["health_timeout"])
        if trial is not None and current_slot(root) == slot == state["committed"]:
            state["outcome"] = _outcome(trial, "interrupted", "the switch was interrupted")
            state["trial"] = None
            write_state(root, state)
        return False, None


def launch(slot_dir: str, argv: list[str]) -> NoReturn:
    """Entry point of `slots/<x>/bin/tiepdan-agent`.

    Without a trial there is nothing to count. With one, the boot state is changed here when
    this process may write it (development, simulated boxes); on a box the agent's user may
    not, and the updater process does the same accounting and guards the agent instead.
    """
    slot_path = Path(slot_dir)
    root, slot = slot_path.parent.parent, slot_path.name
    run_current, guard, local = False, None, True
    if read_state(root)["trial"] is not None:
        try:
            run_current, guard = begin(root, slot)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            local = False
            run_current = _ask_updater(root, slot, argv)
    if run_current:
        _exec_current(root, argv)
    if guard is not None and local:
        _spawn_guardian(root, slot, guard, os.getpid())
    sys.path.insert(0, str(slot_path / "site"))
    from tiepdan.firmware.__main__ import main  # the slot's own code, from here on

    sys.exit(main(argv))


def launch_updater(slot_dir: str, argv: list[str]) -> NoReturn:
    """Entry point of `slots/<x>/bin/tiepdan-updater`: the updater runs the committed slot's
    code whichever slot `current` points at, so a version on trial never owns the slots."""
    root = Path(slot_dir).parent.parent
    committed = read_state(root)["committed"]
    site = root / "slots" / str(committed) / "site"
    sys.path.insert(0, str(site if committed in SLOTS and site.is_dir()
                           else Path(slot_dir) / "site"))
    from tiepdan.firmware.update.daemon import main

    sys.exit(main(argv))


def updater_socket(argv: list[str]) -> str:
    """The updater's socket, from the agent's configuration (`ota.updater_socket`)."""
    import tomllib

    config = os.environ.get("TIEPDAN_CONFIG", "/etc/tiepdan/agent.toml")
    if "--config" in argv[:-1]:
        config = argv[argv.index("--config") + 1]
    try:
        with open(config, "rb") as handle:
            ota = tomllib.load(handle).get("ota", {})
    except (OSError, ValueError):
        ota = {}
    found = ota.get("updater_socket", UPDATER_SOCKET) if isinstance(ota, dict) else None
    return found if isinstance(found, str) and found else UPDATER_SOCKET


def _ask_updater(root: Path, slot: str, argv: list[str]) -> bool:
    """Ask the updater to count this start (it replies whether to run the current slot).

    When it cannot be asked, run the committed slot's code without touching the boot state:
    a version on trial never runs unguarded, and the updater rolls the trial back when it
    comes up."""
    path = updater_socket(argv)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30.0)
            conn.connect(path)
            conn.sendall(json.dumps({"op": "started", "slot": slot}).encode() + b"\n")
            with conn.makefile("rb") as answers:
                for line in answers:
                    answer = json.loads(line)
                    if answer.get("op") == "reply":
                        break
                else:
                    raise ConnectionError("the updater closed the connection")
        if not answer.get("ok"):
            raise ConnectionError(str(answer.get("error")))
        return bool(answer["result"]["run_current"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        committed = read_state(root)["committed"]
        sys.stderr.write(f"tiepdan launcher: updater at {path} unavailable ({exc}); "
                         f"running the committed slot {committed}\n")
        sys.stderr.flush()
        if committed is None or committed == slot:
            return False
        launcher = root / "slots" / committed / LAUNCHER
        os.execv(sys.executable, [sys.executable, str(launcher), *argv])


def _exec_current(root: Path, argv: list[str]) -> NoReturn:
    launcher = root / CURRENT / LAUNCHER
    os.execv(sys.executable, [sys.executable, str(launcher), *argv])


def _spawn_guardian(root: Path, slot: str, timeout: float, agent: int) -> None:
    """Fork a process that rolls back if the agent gives no verdict within `timeout`.

    Double fork: the guardian is nobody's child to reap, and it outlives an exec of the agent.
    It leaves quietly when the agent process is gone (the next start forks a new one).
    """
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return
    try:
        if os.fork():
            os._exit(0)
        # Hold none of the agent's streams: whoever reads them must see them close with it.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if not alive(agent):
                os._exit(0)
        with locked(root):
            state = read_state(root)
            if _rollback_locked(root, state, slot,
                                f"no health verdict within {timeout:g} s of starting"):
                os.kill(agent, signal.SIGTERM)
    finally:
        os._exit(0)


def alive(pid: int) -> bool:
    """Is `pid` running? A zombie (dead, not yet reaped by its parent) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


LAUNCHER_TEMPLATE = """#!{python}
# tiepdan slot launcher, written by tiepdan {version}. Do not edit: see ota/boot.py.
import os
import sys

slot = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(slot, "boot"))
import tiepdan_boot  # noqa: E402

tiepdan_boot.launch(slot, sys.argv[1:])
"""

UPDATER_TEMPLATE = """#!{python}
# tiepdan updater launcher, written by tiepdan {version}. Do not edit: see ota/boot.py.
import os
import sys

slot = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(slot, "boot"))
import tiepdan_boot  # noqa: E402

tiepdan_boot.launch_updater(slot, sys.argv[1:])
"""
