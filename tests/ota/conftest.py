"""Fixtures for the OTA suite: bundles built once per session, a fresh repository per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ota.harness import VARIANTS, RepoServer, build_variants, make_repository
from tiepdan.ota.repository import UpdateRepository


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_variants(tmp_path_factory.mktemp("bundles"), sorted(VARIANTS))


@pytest.fixture
def repo(tmp_path: Path) -> UpdateRepository:
    return make_repository(tmp_path)


@pytest.fixture
def server(repo: UpdateRepository) -> Iterator[RepoServer]:
    served = RepoServer(repo.path).start()
    yield served
    served.stop()
