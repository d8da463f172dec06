"""Fixtures: a real Mosquitto per test, the controller, agents in-process and in subprocesses."""

from __future__ import annotations

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
