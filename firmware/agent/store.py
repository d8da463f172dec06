"""The box's durable local state in TinyDB, written atomically.

TinyDB's default storage rewrites its file in place, so a power cut mid-write leaves a torn
file. `AtomicJSONStorage` writes a temporary file, fsyncs it, renames it over the old one and
fsyncs the directory: after a cut the file is either the old state or the new one.

TinyDB reads the whole file for every query (a command's idempotency check, the outbox length in
each health report). The agent is the file's only writer, so the storage keeps the bytes it last
read or wrote and parses those instead: the card is read once per start, written on changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from tiepdan.firmware.core.durable import write_atomic

log = logging.getLogger(__name__)


class AtomicJSONStorage(Storage):
    def __init__(self, path: str | os.PathLike[str], **_: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._raw: bytes | None = None

    def read(self) -> dict[str, dict[str, Any]] | None:
        raw = self._raw
        if raw is None:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            # Only outside damage (a bad card, a hand edit) gets here; keep it for inspection.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("state_file_corrupt path=%s moved_to=%s", self.path, aside)
            return None
        if not isinstance(data, dict):
            return None
        self._raw = raw
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        self._raw = None  # a failed write leaves the file as it was: read it again
        write_atomic(self.path, payload, 0o600)
        self._raw = payload

    def close(self) -> None:
        pass



class BoxStore:
    """Typed access to the tables the agent keeps across restarts."""

    RESPONSES_KEPT = 64

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = TinyDB(path, storage=AtomicJSONStorage)
        self._meta = self._db.table("meta")
        self._outbox = self._db.table("outbox")
        self._responses = self._db.table("responses")

    def close(self) -> None:
        self._db.close()

    # -- meta ------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self._meta.get(Query().key == key)
        return default if row is None else row["value"]

    def put(self, key: str, value: Any) -> None:
        self._meta.upsert({"key": key, "value": value}, Query().key == key)

    def next_seq(self) -> int:
        """The MQTT session counter (Sparkplug bdSeq): one per connection attempt."""
        seq = (int(self.get("seq", -1)) + 1) % 2**31
        self.put("seq", seq)
        return seq

    # -- outbox ----------------------------------------------------------------------------------

    def outbox_add(self, event_id: str, topic: str, payload: bytes) -> None:
        self._outbox.insert({"id": event_id, "topic": topic, "payload": payload.decode()})

    def outbox_remove(self, event_id: str) -> None:
        self._outbox.remove(Query().id == event_id)

    def outbox_items(self) -> Iterator[tuple[str, str, bytes]]:
        for row in self._outbox.all():
            yield row["id"], row["topic"], row["payload"].encode()

    def outbox_len(self) -> int:
        return len(self._outbox)

    # -- command responses (idempotency across QoS 1 redelivery and restarts) --------------------

    def response_for(self, command_id: str) -> bytes | None:
        row = self._responses.get(Query().id == command_id)
        return None if row is None else row["payload"].encode()

    def remember_response(self, command_id: str, payload: bytes) -> None:
        self._responses.insert({"id": command_id, "payload": payload.decode(), "at": time.time()})
        extra = len(self._responses) - self.RESPONSES_KEPT
        if extra > 0:
            oldest = sorted(self._responses.all(), key=lambda r: r["at"])[:extra]
            with contextlib.suppress(KeyError):
                self._responses.remove(doc_ids=[r.doc_id for r in oldest])
