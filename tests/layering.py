"""The house's import rules, as data, and a checker that reads the source (AST, so imports under
`if TYPE_CHECKING:` and inside functions count as much as the ones at the top)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The units the rules speak of, most specific prefix first.
UNITS: tuple[tuple[str, str], ...] = (
    ("tiepdan.errors", "errors"),
    ("tiepdan.board", "board"),
    ("tiepdan.firmware.protocol", "shared"),
    ("tiepdan.firmware.core", "shared"),
    ("tiepdan.firmware.media", "shared"),
    ("tiepdan.firmware.evidence", "shared"),
    ("tiepdan.firmware", "box"),
    ("tiepdan.ota", "ota"),
    ("tiepdan.provisioning", "provisioning"),
    ("tiepdan.controller", "controller"),
    ("tiepdan.tools", "tools"),
    ("tiepdan", "root"),
)

# unit -> the units it may import (itself always). Anything else is a violation.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "root": frozenset(),
    "board": frozenset({"errors", "root"}),
    "shared": frozenset({"errors", "root"}),
    "ota": frozenset({"errors", "root", "shared"}),
    "provisioning": frozenset({"errors", "root", "shared"}),
    "box": frozenset({"errors", "root", "shared", "board", "ota"}),
    "controller": frozenset({"errors", "root", "shared", "ota", "provisioning"}),
    "tools": frozenset({"errors", "root", "shared", "board", "box", "ota", "provisioning",
                        "controller"}),
}

FOLDERS = {"board": "tiepdan.board", "firmware": "tiepdan.firmware", "ota": "tiepdan.ota",
           "provisioning": "tiepdan.provisioning", "controller": "tiepdan.controller",
           "tools": "tiepdan.tools"}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # module name (or package)
    file: Path
    line: int


def unit_of(module: str) -> str | None:
    for prefix, unit in UNITS:
        if module == prefix or module.startswith(prefix + "."):
            return unit
    return None


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    folder = FOLDERS.get(parts[0])
    if folder is not None:
        parts = folder.split(".") + parts[1:]
    elif parts[0] == "tiepdan":
        pass
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(root: Path) -> Iterator[Path]:
    for folder in FOLDERS:
        yield from sorted((root / folder).rglob("*.py"))
    yield from sorted(p for p in (root / "tiepdan").glob("*.py"))


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    importer = module_name(root, path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                # `from pkg import module` imports pkg.module when that is a module
                yield Import(importer, f"{target}.{alias.name}", path, node.lineno)


def all_imports(root: Path) -> list[Import]:
    return [i for path in sources(root) for i in imports_of(root, path)
            if i.imported.startswith("tiepdan")]


def violations(found: Iterable[Import]) -> list[str]:
    out = []
    for i in found:
        src, dst = unit_of(i.importer), unit_of(i.imported)
        if src is None or dst is None or src == dst:
            continue
        if dst not in ALLOWED[src]:
            out.append(f"{i.file}:{i.line}: {i.importer} ({src}) imports {i.imported} ({dst})")
    return out


def feature_of(module: str) -> str:
    """The feature folder a module belongs to: `tiepdan.controller.sessions.engine` ->
    `tiepdan.controller.sessions`; modules at a top folder's root are their own unit."""
    parts = module.split(".")
    return ".".join(parts[:3])


def cycles(found: Iterable[Import], key: type | None = None,
           level: str = "unit") -> list[list[str]]:
    """Cycles in the graph of units (level="unit") or feature folders (level="feature")."""
    group = unit_of if level == "unit" else feature_of
    graph: dict[str, set[str]] = {}
    for i in found:
        a, b = group(i.importer), group(i.imported)
        if a and b and a != b:
            graph.setdefault(a, set()).add(b)
    found_cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found_cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found_cycles
