"""Structured logs: one event per line, key=value (journald-friendly) or JSON.

Messages are written as `event key=value ...`. Under systemd, stdout goes to journald, so the
box never writes log files to its SD card; a small in-memory ring keeps the last lines for the
`collect-logs` command.

Values often come from unauthenticated input (a URL path, a JSON field name): the key=value
formatter escapes every control character (and the Unicode line separators) in the formatted
message, so no value can end a line and forge another event. The JSON formatter escapes by
encoding.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import time
from typing import Literal

LevelName = Literal["debug", "info", "warning", "error"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {code: _NAMED.get(chr(code), f"\\x{code:02x}")
            for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """`text` on one line: control characters and line separators as backslash escapes."""
    return text.translate(_ESCAPES)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={escape(record.name)} {escape(record.getMessage())}"
        )
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RingHandler(logging.Handler):
    """The last `capacity` formatted lines, for remote log collection."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def tail(self, count: int) -> list[str]:
        return list(self.lines)[-count:]


_ring = RingHandler()


def ring() -> RingHandler:
    """The process's ring of recent lines, attached to the root logger on first use."""
    root = logging.getLogger()
    if _ring not in root.handlers:
        if _ring.formatter is None:
            _ring.setFormatter(KeyValueFormatter())
        root.addHandler(_ring)
    return _ring


def setup(level: LevelName = "info", fmt: Literal["kv", "json"] = "kv") -> None:
    """Configure the root logger once per process; later calls only change level and format."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter()
    root = logging.getLogger()
    root.setLevel(level.upper())
    stream = next((h for h in root.handlers if getattr(h, "_tiepdan", False)), None)
    if stream is None:
        stream = logging.StreamHandler(sys.stderr)
        stream._tiepdan = True  # type: ignore[attr-defined]
        root.addHandler(stream)
    stream.setFormatter(formatter)
    ring().setFormatter(formatter)
    # paho and aiortc are chatty at debug; their warnings still come through.
    for noisy in ("aioice", "aiortc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def set_level(level: LevelName) -> None:
    logging.getLogger().setLevel(level.upper())
