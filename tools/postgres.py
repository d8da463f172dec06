"""A real PostgreSQL (Debian `postgresql`) on loopback for the tests and the benchmarks, as
`broker.py` is for Mosquitto.

The cluster is made fresh by `initdb` in a temporary folder and served by `postgres` on a free
loopback port (no Unix socket), with password (SCRAM) authentication for one superuser whose
random password only the URL carries. PostgreSQL refuses to run as root, so when the tests run
as root (CI) the cluster belongs to, and runs as, the unprivileged `postgres` user the Debian
package creates. `durable=False` (the tests) turns fsync off: a test's database is thrown away.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tiepdan.errors import Unavailable
from tiepdan.tools.broker import free_port
from tiepdan.tools.server_process import kill_process, log_tail, stop_process, wait_listening

log = logging.getLogger(__name__)

SUPERUSER = "tiepdan"
RUN_AS = "postgres"  # the Debian package's user, when we are root


class PostgresError(Unavailable, RuntimeError):
    pass


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())


def bin_dir() -> Path:
    """Debian keeps the server's programs per major version, off PATH: the newest one."""
    found = sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")),
                   key=_version, reverse=True)
    if not found:
        raise PostgresError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    return found[0]


class Postgres:
    """One PostgreSQL cluster; `url(name)` reaches a database in it, `create_database` makes one."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None,
                 durable: bool = True) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.durable = durable
        self.password = secrets.token_urlsafe(18)
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="tpg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._user: str | None = RUN_AS if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{database}"
                f"?connect_timeout=10")

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, user=self._user, capture_output=True, check=False,
                              cwd=self.root)
        if done.returncode != 0:
            raise PostgresError(f"{Path(argv[0]).name} failed: "
                                f"{done.stderr.decode(errors='replace').strip()[-800:]}")

    def start(self, timeout: float = 60.0) -> None:
        if self._user is not None:
            try:
                pwd.getpwnam(self._user)
            except KeyError:
                raise PostgresError(f"running as root and there is no {self._user!r} user to "
                                    "run PostgreSQL as (Debian's postgresql package makes it)"
                                    ) from None
        self._chown(self.root)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                       "--locale=C", *(() if self.durable else ("--no-sync",))])
        finally:
            pwfile.unlink()
        settings = {"listen_addresses": self.host, "port": str(self.port),
                    "unix_socket_directories": "", "max_connections": "40",
                    "shared_buffers": "32MB", "logging_collector": "off"}
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(self.bin / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log_fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = subprocess.Popen(argv, user=self._user, stdout=log_fd,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.root)
        finally:
            os.close(log_fd)
        deadline = time.monotonic() + timeout
        state = wait_listening(self.process, self.host, self.port, timeout)
        while state == "up" and not self._ready():  # it listens before it accepts sessions
            if self.process.poll() is not None:
                state = "exited"
            elif time.monotonic() > deadline:
                state = "timeout"
            else:
                time.sleep(0.1)
        if state != "up":
            self.kill()
            raise PostgresError(f"postgres did not start ({state}):\n"
                                f"{log_tail(self.logfile, 20)}")
        log.info("postgres_started port=%d data=%s", self.port, self.data)

    def _ready(self) -> bool:
        """pg_isready: the server accepts sessions (not "the database system is starting up")."""
        done = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p",
                               str(self.port), "-t", "2"], check=False, capture_output=True)
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT is PostgreSQL's fast shutdown: sessions end, the cluster closes cleanly."""
        stop_process(self.process, timeout, signal.SIGINT)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        kill_process(self.process)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
