"""A real Janus (Debian `janus`) for the tests, the demo and the benchmarks, as `broker.py` is
for Mosquitto.

The configuration is written fresh into a work directory, never taken from `/etc/janus`:
Debian's default ships a well-known `admin_secret` and listens on every interface. Here only the
WebSocket transport runs, bound to `ws_ip` (loopback by default), every request must carry a
random `api_secret`, the admin API is off, and only the VideoRoom and AudioBridge plugins load.
ICE gathers on one interface only (`ice_enforce_list`): Janus skips loopback, so tests run it
in a network namespace of its own (`netns`) whose veth link only this host reaches.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

from tiepdan.errors import Unavailable
from tiepdan.tools.broker import free_port
from tiepdan.tools.netns import Netns
from tiepdan.tools.server_process import kill_process, log_tail, stop_process, wait_listening

log = logging.getLogger(__name__)

PLUGINS = ("libjanus_videoroom.so", "libjanus_audiobridge.so")
TRANSPORTS = ("libjanus_websockets.so",)


class JanusError(Unavailable, RuntimeError):
    pass


def janus_binary() -> str:
    found = shutil.which("janus") or shutil.which("janus", path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise JanusError("janus is not installed (Debian: apt-get install janus)")
    return found


def _lib_dir() -> Path:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for candidate in (Path("/usr/lib") / multiarch / "janus", Path("/usr/lib/janus"),
                      Path("/opt/janus/lib/janus")):
        if (candidate / "plugins").is_dir():
            return candidate
    raise JanusError("janus plugins folder not found")


class Janus:
    """One Janus process; `url` and `api_secret` reach its WebSocket API.

    With `netns` (see `tiepdan.tools.netns`) it runs inside that namespace and listens and
    gathers on the namespace's end of the veth link only; without, on `host` and
    `ice_interface` (which must not be loopback: Janus skips loopback interfaces).
    """

    def __init__(self, workdir: Path, *, netns: Netns | None = None, host: str = "127.0.0.1",
                 port: int | None = None, ice_interface: str = "",
                 rtp_ports: tuple[int, int] = (0, 0), nat_1_1: str = "",
                 debug_level: int = 3) -> None:
        self.workdir = workdir
        self.netns = netns
        self.host = netns.ns_ip if netns is not None else host
        self.port = port or free_port("127.0.0.1")
        if netns is not None:
            ice_interface = netns.ns_if
        if not ice_interface:
            raise JanusError("janus needs an interface for ICE (it never uses loopback)")
        self.api_secret = secrets.token_urlsafe(24)
        self.ice_interface = ice_interface
        self.rtp_ports = rtp_ports
        self.nat_1_1 = nat_1_1
        self.debug_level = debug_level
        self.logfile = workdir / "janus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def write_config(self) -> None:
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        libs = _lib_dir()
        low, high = self.rtp_ports
        media = f'\trtp_port_range = "{low}-{high}"\n' if low and high else ""
        nat = f'\tnat_1_1_mapping = "{self.nat_1_1}"\n' if self.nat_1_1 else ""
        (conf / "janus.jcfg").write_text(
            "# written by tiepdan.tools.janus\n"
            "general: {\n"
            f'\tconfigs_folder = "{conf}"\n'
            f'\tplugins_folder = "{libs / "plugins"}"\n'
            f'\ttransports_folder = "{libs / "transports"}"\n'
            f'\tevents_folder = "{libs / "events"}"\n'
            f'\tloggers_folder = "{libs / "loggers"}"\n'
            f"\tdebug_level = {self.debug_level}\n"
            "\tdebug_timestamps = true\n"
            "\tdebug_colors = false\n"
            f'\tapi_secret = "{self.api_secret}"\n'
            "\tsession_timeout = 60\n"
            "\thide_dependencies = true\n"
            "}\n"
            f"media: {{\n{media}\tno_media_timer = 1\n\tdtls_timeout = 500\n}}\n"
            f'nat: {{\n\tice_enforce_list = "{self.ice_interface}"\n{nat}'
            "\tnice_debug = false\n}\n"
            "plugins: {\n\tdisable = \"" + ",".join(
                p.name for p in sorted((libs / "plugins").glob("libjanus_*.so"))
                if p.name not in PLUGINS) + "\"\n}\n"
            "transports: {\n\tdisable = \"" + ",".join(
                p.name for p in sorted((libs / "transports").glob("libjanus_*.so"))
                if p.name not in TRANSPORTS) + "\"\n}\n"
            "events: {\n\tbroadcast = false\n}\n"
            "loggers: {\n\tdisable = \"libjanus_jsonlog.so\"\n}\n")
        (conf / "janus.transport.websockets.jcfg").write_text(
            "general: {\n"
            "\tjson = \"compact\"\n\tws = true\n"
            f"\tws_port = {self.port}\n\tws_ip = \"{self.host}\"\n"
            "\twss = false\n}\n"
            "admin: {\n\tadmin_ws = false\n\tadmin_wss = false\n}\n")
        # Rooms are created per session through the API; none is predefined.
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
        (conf / "janus.plugin.audiobridge.jcfg").write_text("general: {\n}\n")

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.write_config()
        with self.logfile.open("ab") as out:
            argv = [janus_binary(), "--configs-folder", str(self.workdir / "conf"),
                    "--config", str(self.workdir / "conf" / "janus.jcfg")]
            if self.netns is not None:
                argv = self.netns.command(argv)
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        state = wait_listening(self.process, self.host, self.port, timeout)
        if state == "up":
            log.info("janus_up port=%d pid=%d", self.port, self.process.pid)
            return
        if state == "exited":
            raise JanusError(f"janus exited with {self.process.returncode}: {self.log_tail()}")
        self.kill()
        raise JanusError(f"janus did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout, signal.SIGINT)  # janus's own clean shutdown

    def kill(self) -> None:
        kill_process(self.process)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.logfile, lines)

    def __enter__(self) -> Janus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
