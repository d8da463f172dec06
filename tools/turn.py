"""A real coturn (Debian `coturn`) for the tests and the demo, as `broker.py` is for Mosquitto.

Its configuration is written fresh (never `/etc/turnserver.conf`): UDP and TCP on one
listening address, no TLS/DTLS listeners, no CLI, the TURN REST API's shared secret
(`use-auth-secret`) so the controller mints time-limited credentials per point
(`controller/sessions/turn.py`), relay ports in a fixed range, loopback and multicast peers
refused (coturn's defaults, kept).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
from pathlib import Path

from tiepdan.errors import Unavailable
from tiepdan.tools.broker import free_port
from tiepdan.tools.server_process import log_tail, stop_process, wait_listening

log = logging.getLogger(__name__)


class TurnError(Unavailable, RuntimeError):
    pass


def turnserver_binary() -> str:
    found = shutil.which("turnserver") or shutil.which("turnserver", path="/usr/bin:/usr/sbin")
    if not found:
        raise TurnError("coturn is not installed (Debian: apt-get install coturn)")
    return found


class Coturn:
    """One turnserver listening (and relaying) on `host`; `url` for the point's ICE."""

    def __init__(self, workdir: Path, *, host: str, port: int | None = None,
                 relay_ports: tuple[int, int] = (49160, 49200)) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.secret = secrets.token_urlsafe(24)
        self.relay_ports = relay_ports
        self.conf = workdir / "turnserver.conf"
        self.logfile = workdir / "turnserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        low, high = self.relay_ports
        self.conf.write_text(
            "# written by tiepdan.tools.turn\n"
            f"listening-ip={self.host}\n"
            f"relay-ip={self.host}\n"
            f"listening-port={self.port}\n"
            f"min-port={low}\nmax-port={high}\n"
            "use-auth-secret\n"
            f"static-auth-secret={self.secret}\n"
            "realm=tiepdan\n"
            "fingerprint\n"
            "no-tls\nno-dtls\nno-cli\nno-multicast-peers\n"
            "no-software-attribute\nverbose\n"
            f"log-file={self.logfile}\nsimple-log\nno-stdout-log\n"
            f"pidfile={self.workdir / 'turnserver.pid'}\n")

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.write_config()
        self.process = subprocess.Popen(
            [turnserver_binary(), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # the TCP listener comes up with the UDP one
        state = wait_listening(self.process, self.host, self.port, timeout)
        if state == "up":
            log.info("turn_up url=%s pid=%d", self.url, self.process.pid)
            return
        if state == "exited":
            raise TurnError(f"turnserver exited with {self.process.returncode}: "
                            f"{self.log_tail()}")
        self.stop()
        raise TurnError(f"turnserver did not listen on {self.host}:{self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.logfile, lines)

    def __enter__(self) -> Coturn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
