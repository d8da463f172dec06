"""`tiepdan-controller session ...` against a running controller: open, list, show, end."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import msgspec
import pytest
import tomli_w

from tests.sessions.points import controller_config
from tests.sessions.test_session_bad_input import register_fake_box
from tests.support import Observer, eventually, running_controller
from tiepdan.controller.cli import main as cli
from tiepdan.tools.broker import Mosquitto


async def run_cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["--config", str(config), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


async def test_open_schedule_list_show_and_end_from_the_cli(
        tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str],
        database: Path | str) -> None:
    """On SQLite and on PostgreSQL: the sessions' and schedules' stores behind the CLI."""
    config = controller_config(tmp_path, broker, database, invite_timeout=1.0)
    path = tmp_path / "controller.toml"
    path.write_text(tomli_w.dumps(msgspec.to_builtins(config)))
    async with running_controller(config) as controller, Observer(broker, "boxes") as boxes:
        for device in ("cli-host", "cli-a", "cli-b"):
            await register_fake_box(boxes, device)
        await eventually(lambda: controller.registry.get("cli-b"), 5, what="boxes registered")

        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
        out = await run_cli(path, capsys, "session", "open", "--host", "cli-host",
                            "--invite", "cli-a,cli-b", "--at", later, "--title", "Tiếp dân")
        assert "scheduled" in out
        scheduled = controller.sessions.find("scheduled")[0]

        out = await run_cli(path, capsys, "session", "open", "--host", "cli-host",
                            "--invite", "cli-a", "--every", "THU 08:00")
        schedule = controller.schedules.all()[0]
        assert schedule.id in out and schedule.active and schedule.next_session

        listing = json.loads(await run_cli(path, capsys, "session", "list", "--json"))
        assert {s["id"] for s in listing["sessions"]} == {scheduled.id, schedule.next_session}
        assert listing["schedules"][0]["every"] == "THU 08:00"

        # The scheduled one starts when its time comes; nobody answers, so nobody is reached.
        await controller.sessions.tick(now=(scheduled.starts_at or 0) + 1)
        assert controller.sessions.get(scheduled.id).state == "inviting"
        await eventually(lambda: all(p.state == "unreachable"
                                     for p in controller.sessions.points(scheduled.id)), 10,
                         what="silent boxes unreachable")
        shown = json.loads(await run_cli(path, capsys, "session", "show", scheduled.id))
        assert [p["device"] for p in shown["points"]] == ["cli-host", "cli-a", "cli-b"]
        assert [e["what"] for e in shown["log"]][:2] == ["opened", "inviting"]

        out = await run_cli(path, capsys, "session", "end", scheduled.id)
        assert "ended" in out and controller.sessions.get(scheduled.id).end_reason == "admin"
        code = await asyncio.to_thread(cli.main, ["--config", str(path), "session", "end",
                                                  scheduled.id])
        assert code == 1  # already ended: a clear error, not a crash

        # Once this Thursday's session has started, next Thursday's is created.
        first = controller.sessions.get(schedule.next_session)
        await controller.sessions.tick(now=(first.starts_at or 0) + 1)
        await controller.schedules.tick()
        second = controller.sessions.get(controller.schedules.get(schedule.id).next_session)
        assert second.id != first.id and second.state == "scheduled"
        assert second.starts_at == (first.starts_at or 0) + 7 * 86400

        await run_cli(path, capsys, "session", "unschedule", schedule.id)
        assert not controller.schedules.get(schedule.id).active
        assert controller.sessions.get(second.id).state == "ended"
