"""`tiepdan-updater`: the process that owns the code slots, serving the agent on a Unix socket.

The agent's user may not write /opt/tiepdan, so a compromised agent cannot change the code the
box boots next. This process can; it answers only the agent's uid (SO_PEERCRED), one request
per connection (`channel.py`), and trusts nothing a request says beyond names it looks up in
the signed TUF metadata. A bad request gets an error reply and a log line, never a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import signal
import socket
import struct
import sys
from pathlib import Path

import msgspec

from tiepdan import __version__
from tiepdan.errors import Forbidden, TiepdanError
from tiepdan.firmware.agent.config import DEFAULT_PATH, AgentConfig, load_config
from tiepdan.firmware.agent.notifier import Notifier
from tiepdan.firmware.core import logs
from tiepdan.firmware.core.config import ConfigError
from tiepdan.firmware.update import channel
from tiepdan.firmware.update.updater import Stopping, Updater

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # for the one request line; a silent peer is dropped


class PeerRefused(Forbidden):
    """The peer's uid is not the agent's."""


class PeerGone(Exception):
    """The agent hung up while its request was being worked on."""


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def agent_uid(user: str) -> int:
    """The uid allowed to ask: a user name, or a number."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"ota.agent_user: no user {user!r} on this system") from None


class UpdaterServer:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.path = Path(config.ota.updater_socket)
        self.allowed = agent_uid(config.ota.agent_user)
        self.updater = Updater(config, Path(config.ota.updater_state_dir))
        self._busy = asyncio.Lock()  # one fetch or install at a time
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        await self.updater.recover()
        self.updater.guard_pending_trial()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, str(self.path),
                                                       limit=channel.MAX_LINE)
        # Anyone may connect; the kernel's credentials of the peer decide who is answered.
        os.chmod(self.path, 0o666)
        log.info("updater_listening socket=%s agent_uid=%d root=%s", self.path, self.allowed,
                 self.updater.root)

    async def stop(self) -> None:
        self.updater.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        op = "-"
        try:
            pid, uid, _ = peer(writer.get_extra_info("socket"))
            if uid != self.allowed:
                raise PeerRefused(f"uid {uid} may not use the updater (only {self.allowed})")
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise channel.BadRequest(
                    f"request longer than {channel.MAX_LINE} bytes") from None
            except (asyncio.IncompleteReadError, TimeoutError):
                raise channel.BadRequest("no complete request line") from None
            try:
                request = channel.decode_request(line)
            except msgspec.DecodeError as exc:
                raise channel.BadRequest(f"bad request: {exc}") from None
            op = type(request).__name__.lower()
            log.info("updater_request op=%s pid=%d uid=%d", op, pid, uid)
            try:
                result = await self._handle(request, pid, reader, writer)
            except OSError as exc:  # the slots' disk, not the peer
                raise channel.Refused("failed", f"{op} failed: {exc}") from None
            reply = channel.Reply(ok=True, result=result)
        except channel.Refused as exc:
            log.warning("updater_refused op=%s status=%s reason=%s", op, exc.status,
                        exc.reason)
            reply = channel.Reply(ok=False, error=channel.ErrorBody(exc.status, exc.reason))
        except TiepdanError as exc:
            log.warning("updater_bad_request op=%s code=%s error=%s", op, exc.code,
                        exc)
            reply = channel.Reply(ok=False, error=channel.ErrorBody(exc.code, str(exc)))
        except Stopping:
            reply = channel.Reply(ok=False, error=channel.ErrorBody("stopping", "stopping"))
        except (PeerGone, OSError) as exc:
            log.info("updater_peer_gone op=%s error=%s", op, exc or type(exc).__name__)
            writer.close()
            return
        except Exception as exc:  # a bug here must not take the slots' owner down
            log.exception("updater_error op=%s", op)
            reply = channel.Reply(ok=False, error=channel.ErrorBody(
                "internal", f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            writer.write(channel.encode(reply))
            await writer.drain()
            writer.write_eof()
            # Closing with unread bytes would reset the connection and lose the reply (a refused
            # peer is answered before it is read): let the peer finish or hang up first.
            async with asyncio.timeout(2.0):
                while await reader.read(channel.MAX_LINE):
                    pass
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()

    async def _handle(self, request: channel.Request, pid: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> object:
        updater = self.updater
        match request:
            case channel.Fetch():
                async with self._busy:
                    return await self._fetch(request, reader, writer)
            case channel.Install():
                async with self._busy:
                    return {"slot": await updater.install(request)}
            case channel.Switch(slot=slot, target=target, job=job):
                async with self._busy:
                    await updater.switch(slot, target, job)
                return None
            case channel.Commit(slot=slot):
                return {"done": await updater.commit(slot)}
            case channel.Rollback(slot=slot, reason=reason):
                return {"done": await updater.rollback(slot, reason)}
            case channel.Reported():
                await updater.mark_reported()
                return None
            case channel.Started(slot=slot):
                return await updater.started(slot, pid)
        raise AssertionError(f"unhandled request {request!r}")

    async def _fetch(self, request: channel.Fetch, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> object:
        """Download while relaying progress; a caller that goes away stops the download."""

        def progress(percent: float) -> None:
            writer.write(channel.encode(channel.Progress(round(percent, 1))))

        work = asyncio.create_task(self.updater.fetch(request, progress))
        gone = asyncio.create_task(reader.read(1))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                log.info("updater_fetch_abandoned job=%s", request.job)
        if work.cancelled():
            raise PeerGone("the agent went away; the partial download is kept")
        return work.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiepdan-updater", description=__doc__)
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("TIEPDAN_CONFIG", DEFAULT_PATH)),
                        help="the box's configuration (TOML, the agent's); default %(default)s")
    parser.add_argument("--version", action="version", version=f"tiepdan {__version__}")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        config = load_config(args.config)
        server = UpdaterServer(config)
    except ConfigError as exc:
        log.error("config_invalid %s", exc)
        return 2
    if not config.ota.updater_socket:
        log.error("config_invalid ota.updater_socket is empty: the updater runs in the agent")
        return 2
    logs.setup(config.log.level, config.log.format)
    os.umask(0o022)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        Notifier().ready()
        await stop.wait()
        await server.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
