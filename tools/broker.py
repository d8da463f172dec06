"""A real Mosquitto on loopback for the demo, the tests and the benchmarks.

Persistence is on: a broker restart keeps the controller's persistent session and the QoS 1
messages queued for it, which is what "no event lost across a broker restart" rests on.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tiepdan.errors import Unavailable
from tiepdan.tools.server_process import kill_process, log_tail, stop_process, wait_listening

log = logging.getLogger(__name__)


class BrokerError(Unavailable, RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


class Mosquitto:
    """One broker process; `listeners` is the config text for its listeners and security.

    Without `listeners`, it serves plain MQTT to anonymous clients on `host:port`: fine for a
    unit test on loopback, never for a deployment (provisioning writes the TLS configuration).
    """

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 listeners: str | None = None, autosave_interval: int = 1) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.listeners = listeners or (
            f"listener {self.port} {host}\nallow_anonymous true\n"
        )
        # Tests save every second so that a killed broker loses little; a deployed Mosquitto keeps
        # Debian's 1800 s: each save writes every session and stalls the broker meanwhile.
        self.autosave_interval = autosave_interval
        self.conf = workdir / "mosquitto.conf"
        self.logfile = workdir / "mosquitto.log"
        self.pidfile = workdir / "mosquitto.pid"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "# written by tiepdan.tools.broker\n"
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"autosave_interval {self.autosave_interval}\n"
            "autosave_on_changes false\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.logfile}\n"
            f"pid_file {self.pidfile}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
            "connection_messages true\n"
            f"{self.listeners}"
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if not self.conf.exists():
            self.write_config()
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        state = wait_listening(self.process, self.host, self.port, timeout)
        if state == "up":
            log.info("broker_up port=%d pid=%d", self.port, self.process.pid)
            return
        if state == "exited":
            err = self.process.stderr.read().decode() if self.process.stderr else ""
            raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err} "
                              f"{self.log_tail()}")
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and closes every connection."""
        stop_process(self.process, timeout)
        self._close()

    def kill(self) -> None:
        kill_process(self.process)
        self._close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: reread the configuration (ACLs, CRL) without dropping clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def reload_command(self) -> list[str]:
        """A command that reloads this broker, for `provisioning.broker_reload`."""
        return ["sh", "-c", 'exec kill -HUP "$(cat "$0")"', str(self.pidfile)]

    def _close(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.logfile, lines)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
