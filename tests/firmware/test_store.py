"""The box's local state: atomic writes, crash safety, outbox and response memory."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiepdan.firmware.agent import store as store_module
from tiepdan.firmware.agent.store import AtomicJSONStorage, BoxStore


def test_state_survives_reopening(tmp_path: Path) -> None:
    store = BoxStore(tmp_path / "state.json")
    assert [store.next_seq() for _ in range(3)] == [0, 1, 2]
    store.outbox_add("e1", "t/1", b'{"a":1}')
    store.remember_response("c1", b'{"ok":true}')
    store.close()
    again = BoxStore(tmp_path / "state.json")
    assert again.next_seq() == 3
    assert list(again.outbox_items()) == [("e1", "t/1", b'{"a":1}')]
    assert again.response_for("c1") == b'{"ok":true}'
    again.outbox_remove("e1")
    assert again.outbox_len() == 0


def test_a_crash_mid_write_leaves_the_previous_state(tmp_path: Path) -> None:
    """Kill -9 a writer between writing the temporary file and renaming it."""
    path = tmp_path / "state.json"
    store = BoxStore(path)
    store.put("desired_version", 7)
    store.close()
    script = f"""
import os, sys
from tiepdan.firmware.agent.store import BoxStore
real_replace = os.replace
def die(src, dst):
    os.kill(os.getpid(), 9)
os.replace = die
BoxStore({str(path)!r}).put("desired_version", 8)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == -9
    assert (tmp_path / ".state.json.tmp").exists(), "the crash happened before the rename"
    reopened = BoxStore(path)
    assert reopened.get("desired_version") == 7


def test_a_damaged_file_is_kept_aside_and_the_box_starts(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"meta": {"1": {"key": "seq", "va')
    store = BoxStore(path)
    assert store.next_seq() == 0
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"meta"')


def test_writes_are_private_to_the_agent(tmp_path: Path) -> None:
    storage = AtomicJSONStorage(tmp_path / "s.json")
    storage.write({"t": {"1": {"a": 1}}})
    assert os.stat(tmp_path / "s.json").st_mode & 0o077 == 0
    assert json.loads((tmp_path / "s.json").read_text()) == {"t": {"1": {"a": 1}}}


def test_response_memory_is_bounded(tmp_path: Path) -> None:
    store = BoxStore(tmp_path / "state.json")
    for i in range(BoxStore.RESPONSES_KEPT + 10):
        store.remember_response(f"c{i}", b"{}")
    assert store.response_for("c0") is None
    assert store.response_for(f"c{BoxStore.RESPONSES_KEPT + 9}") == b"{}"


def test_queries_read_the_card_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's idempotency check and each health report's outbox length query the store;
    the agent is the file's only writer, so they are answered from what it last read or wrote."""
    path = tmp_path / "state.json"
    BoxStore(path).put("desired_version", 7)
    reads: list[Path] = []
    real = Path.read_bytes

    def counted(self: Path) -> bytes:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    store = BoxStore(path)
    for n in range(50):
        assert store.get("desired_version") == 7
        assert store.response_for(f"c{n}") is None
        assert store.outbox_len() == 0
    store.put("desired_version", 8)
    assert store.get("desired_version") == 8
    assert reads.count(path) == 1


def test_a_write_that_fails_after_the_rename_reads_the_card_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure late in a write (the directory's fsync) may leave the new state on the card;
    the store must then answer from the card, not from its memory of the old state."""
    path = tmp_path / "state.json"
    store = BoxStore(path)
    store.put("desired_version", 7)
    real = store_module.write_atomic

    def fails_late(target: Path, data: bytes, mode: int) -> None:
        real(target, data, mode)
        raise OSError(errno.EIO, "fsync of the directory failed")

    monkeypatch.setattr(store_module, "write_atomic", fails_late)
    with pytest.raises(OSError):
        store.put("desired_version", 8)
    monkeypatch.undo()
    assert store.get("desired_version") == 8 == BoxStore(path).get("desired_version")
