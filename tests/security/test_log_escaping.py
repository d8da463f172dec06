"""Log injection (issue 15): newlines in unauthenticated input cannot forge a log line.

The two attacks from the probe, against the real controller: a JSON field name with a newline
sent to the enrollment endpoint, and `%0A` in an `/api/` path on the admin listener. Each
still writes its refusal, on one line, with the newline escaped.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from tests.provisioning.support import post_enroll
from tests.support import init_ca, make_controller_config, running_controller
from tiepdan.firmware.core.logs import KeyValueFormatter, escape
from tiepdan.tools.broker import Mosquitto

FORGED = "ts=2026-01-01T00:00:00.000Z level=info logger=x enroll_done device=xa-evil"


@contextlib.contextmanager
def formatted_log() -> Iterator[io.StringIO]:
    """The lines exactly as the controller writes them (the key=value formatter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def _forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("ts=")
            or "enroll_done device=xa-evil" in line.split(" logger=")[0]
            or line.startswith(FORGED)]


def test_every_control_character_is_escaped() -> None:
    assert escape("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i") == \
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i"
    assert escape("xã Hưng Nguyên") == "xã Hưng Nguyên"  # Vietnamese stays readable
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "refused path=%s error=%r",
                               ("/api/x\nforged=1", ValueError("a\nb")), None)
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "path=/api/x\\nforged=1" in line


async def test_newlines_sent_by_strangers_stay_on_one_line(tmp_path: Path,
                                                           broker: Mosquitto) -> None:
    config = make_controller_config(tmp_path, broker)
    init_ca(config)
    async with running_controller(config) as c:
        with formatted_log() as out:
            # 1. a JSON field name with a newline, to the enrollment endpoint
            body = b'{"device": "xa-1", "\\n' + FORGED.encode() + b'": 1}'
            status, answer = await post_enroll(c, body)
            assert status == 400 and answer["error"]["code"] == "bad_request"
            # 2. %0A in an /api/ path, without a token
            async with aiohttp.ClientSession() as http, http.get(
                    f"{c.config.api_url}/api/devices/x%0A{FORGED.replace(' ', '%20')}") as reply:
                assert reply.status == 401
        text = out.getvalue()
    refusals = [line for line in text.splitlines() if "enroll_refused" in line
                or "http_refused" in line]
    assert len(refusals) >= 2, text
    assert all("\\n" + FORGED in line for line in refusals), refusals
    assert not _forged_lines(text), text
