"""What the servers the tests and the demo start (Mosquitto, coturn, Janus) have in common:
waiting until one listens, stopping it, and the end of its log for an error message."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal


def wait_listening(process: subprocess.Popen[bytes], host: str, port: int,
                   timeout: float) -> Literal["up", "exited", "timeout"]:
    """Until something accepts TCP on host:port, the process exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited"
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return "up"
        except OSError:
            time.sleep(0.05)
    return "timeout"


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float,
                 signum: signal.Signals = signal.SIGTERM) -> None:
    """Ask with `signum` (the server's clean shutdown), kill if it has not gone in `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process(process)


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
