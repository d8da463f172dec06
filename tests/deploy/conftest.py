"""Fixtures for deployment tests: the x86_64 artifact, built offline from this environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiepdan.tools.packaging import artifact


@pytest.fixture(scope="session")
def box_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real artifact a box installs (box-only wheel and every dependency wheel), built
    without the network; re-packed wheels are cached under ~/.cache/tiepdan, so reruns are fast."""
    return artifact.build(artifact.host_target(), "1.0.0", tmp_path_factory.mktemp("dist"),
                          offline=True)
