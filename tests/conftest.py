"""Fixtures: a real Mosquitto per test, the controller, agents in-process and in subprocesses,
the controller's database on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    AgentProcess,
    SecureBroker,
    make_controller_config,
    running_controller,
)
from tiepdan.controller.service import Controller
from tiepdan.tools.broker import Mosquitto
from tiepdan.tools.postgres import Postgres


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="run fault-injection loops for many more rounds")


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak run only (--soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b
    b.kill()


@pytest.fixture
async def controller(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Controller]:
    async with running_controller(make_controller_config(tmp_path, broker)) as c:
        yield c


@pytest.fixture
def agent_process() -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> AgentProcess:
        process = AgentProcess(config, env)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """A real Mosquitto with provisioning's mutual-TLS listener, per-device ACL and CRL."""
    secure = SecureBroker(tmp_path)
    with secure.broker:
        yield secure
    secure.broker.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One real PostgreSQL cluster for the whole run (fsync off: every database is thrown away)."""
    server = Postgres(durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """Where a test's controller database lives (`Database(database)`, `database.url`): a fresh
    SQLite file, or a fresh database in the session's PostgreSQL, dropped afterwards."""
    if request.param == "sqlite":
        yield tmp_path / "controller.db"
        return
    server: Postgres = request.getfixturevalue("postgres_server")
    name = f"t_{secrets.token_hex(6)}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)
