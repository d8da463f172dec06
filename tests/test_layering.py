"""Imports point one way (DESIGN.md): board imports none of ours, the shared firmware core never
imports the box-only agent or the controller, the controller never imports the agent or board,
ota and provisioning never import the controller, and no top-level unit cycles, TYPE_CHECKING
imports included. The rules are data in `tests/layering.py`; these tests also prove the checker
can fail, on a copy of the tree with a forbidden import added."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.layering import FOLDERS, all_imports, cycles, unit_of, violations

ROOT = Path(__file__).resolve().parent.parent


def test_the_tree_keeps_the_import_rules() -> None:
    found = all_imports(ROOT)
    assert len(found) > 300  # the checker really read the tree
    assert violations(found) == []


def test_no_cycle_between_top_level_units() -> None:
    assert cycles(all_imports(ROOT)) == []


def test_every_source_file_belongs_to_a_unit() -> None:
    modules = {i.importer for i in all_imports(ROOT)}
    assert all(unit_of(m) is not None for m in modules)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in [*FOLDERS, "tiepdan"]:
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "locale", "*.png"))
    return tmp_path


def add_line(path: Path, line: str) -> None:
    text = path.read_text()
    future = "from __future__ import annotations\n"
    assert future in text
    path.write_text(text.replace(future, f"{future}{line}\n", 1))


@pytest.mark.parametrize(("file", "line", "rule"), [
    ("board/panel.py", "from tiepdan.firmware import protocol", "board imports"),
    ("firmware/evidence/sealer.py", "from tiepdan.firmware.agent.agent import Agent",
     "shared core imports the agent"),
    ("firmware/core/logs.py", "import tiepdan.controller.service", "shared core imports"),
    ("controller/fleet/registry.py", "from tiepdan.board.profile import load_profile",
     "controller imports board"),
    ("controller/sessions/engine.py", "from tiepdan.firmware.call.client import CallClient",
     "controller imports the agent"),
    ("ota/bundle.py", "from tiepdan.controller.config import ControllerConfig",
     "ota imports controller"),
])
def test_a_forbidden_import_is_caught(tree: Path, file: str, line: str, rule: str) -> None:
    assert violations(all_imports(tree)) == []
    add_line(tree / file, line)
    found = violations(all_imports(tree))
    assert len(found) == 1 and file in found[0], rule


def test_an_import_under_type_checking_counts(tree: Path) -> None:
    path = tree / "provisioning" / "claims.py"
    path.write_text(path.read_text() + "\nif TYPE_CHECKING:\n"
                    "    from tiepdan.controller.service import Controller\n")
    assert any("provisioning/claims.py" in v for v in violations(all_imports(tree)))


def test_a_cycle_is_caught(tree: Path) -> None:
    # ota may import the shared core; the shared core importing ota back closes a cycle
    add_line(tree / "firmware" / "core" / "durable.py", "from tiepdan.ota import bundle")
    assert cycles(all_imports(tree)) != []
