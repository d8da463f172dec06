"""Id and name patterns match the whole string: `$` also accepts a trailing newline."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

from tiepdan.controller.archive.store import SEGMENT_NAME as ARCHIVE_SEGMENT
from tiepdan.firmware import protocol
from tiepdan.firmware.evidence.recorder import SEGMENT_NAME as BOX_SEGMENT

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("board", "controller", "firmware", "ota", "provisioning", "tools")


def test_a_trailing_newline_is_not_an_id() -> None:
    assert protocol.is_device_id("abc")
    assert not protocol.is_device_id("abc\n")
    with pytest.raises(protocol.ProtocolError):
        protocol.check_device_id("xa-01\n")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert("abc\n", protocol.DeviceId)
    with pytest.raises(protocol.ProtocolError):
        protocol.command_topic("abc", "ping\n")


def test_segment_names_refuse_a_trailing_newline() -> None:
    for pattern in (ARCHIVE_SEGMENT, BOX_SEGMENT):
        assert pattern.fullmatch("000001.mkv.age")
        assert not pattern.fullmatch("000001.mkv.age\n")
        assert not pattern.match("000001.mkv.age\n")


def _patterns(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals used as regular expressions: re.* arguments and msgspec `pattern=`."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_re = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id == "re" and func.attr in ("compile", "match", "search")
        args = list(node.args[:1]) if is_re else []
        args += [k.value for k in node.keywords if k.arg == "pattern"]
        flags = [k for k in node.keywords if k.arg == "flags"] + list(node.args[1:2])
        multiline = any("M" in ast.unparse(f) for f in flags)
        for arg in args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not multiline:
                found.append((node.lineno, arg.value))
    return found


def test_no_pattern_in_the_tree_ends_in_a_bare_dollar() -> None:
    offenders = []
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for line, pattern in _patterns(ast.parse(path.read_text(), str(path))):
                if pattern.endswith("$") and not pattern.endswith("\\$"):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {pattern!r}")
    assert not offenders, "use \\Z or fullmatch:\n" + "\n".join(offenders)
