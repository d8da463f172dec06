"""Every inbound handler, agent and controller, fed malformed input by hypothesis.

The agent and the controller run for real (real broker, own event loop in a thread); hypothesis
hands their message handlers malformed, oversized, wrong-type and wrong-topic messages. Each
must log an error, answer a command with an error response where one is expected, and keep
working: a final round trip through the broker proves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import (
    Observer,
    eventually,
    make_agent_config,
    make_controller_config,
    running_agent,
    running_controller,
)
from tiepdan.firmware import protocol
from tiepdan.firmware.core.mqtt import Inbound
from tiepdan.tools.broker import Mosquitto

T = TypeVar("T")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _shaped(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that look like the real payloads with wrong or missing fields."""
    fields = {
        "command": ["id", "ts", "args"],
        "state": ["state", "seq", "ts"],
        "birth": ["seq", "ts", "firmware", "board", "boot_id", "point", "keepalive"],
        "health": ["ts", "uptime_s", "cpu_percent", "mem_percent", "disk_free_bytes"],
        "event": ["id", "ts", "data"],
        "desired": ["version", "ts", "config"],
    }[kind]
    return st.fixed_dictionaries({}, optional={f: json_values for f in fields})


payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(["command", "state", "birth", "health", "event", "desired"]).flatmap(
        _shaped).map(lambda v: json.dumps(v).encode()),
    st.just(b"{" + b" " * (protocol.MAX_PAYLOAD + 1) + b"}"),
    st.just(json.dumps({"id": "x" * 65, "ts": -1, "args": []}).encode()),
)


def _is_garbage(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return True
    return len(payload) > protocol.MAX_PAYLOAD


class LoopThread:
    """An event loop in its own thread, so synchronous hypothesis tests can drive async code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def errors() -> Iterator[Records]:
    handler = Records()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture
def box(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[LoopThread, Any, Observer]]:
    """A running agent plus an observer of what it answers."""
    lt = LoopThread()
    stack: list[Any] = []

    async def start() -> tuple[Any, Observer]:
        agent_cm = running_agent(make_agent_config(tmp_path, broker, "xa-fuzz"))
        observer = Observer(broker, "fuzz-observer")
        running = await agent_cm.__aenter__()
        await observer.__aenter__()
        await observer.link.subscribe((protocol.device_filter("xa-fuzz", "res/#"), 1))
        stack.extend([agent_cm, observer])
        return running, observer

    running, observer = lt.run(start())
    yield lt, running, observer

    async def stop() -> None:
        await observer.__aexit__(None, None, None)
        await stack[0].__aexit__(None, None, None)

    lt.run(stop())
    lt.close()


agent_topics = st.one_of(
    st.sampled_from(["cmd/ping", "cmd/get-status", "cmd/collect-logs", "cmd/nope",
                     "state/desired", "$state", "call/x/offer", "evt/button", "cmd/a/b",
                     "jobs/notify", "jobs/j1/update"]),
    st.text(alphabet="abc/$#+-", min_size=1, max_size=12),
)
reply_topics = st.sampled_from([None, "RES", "tiepdan/v1/d/xa-other/res/central", "x/y", ""])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(suffix=agent_topics, payload=payloads, reply=reply_topics,
       correlation=st.none() | st.binary(max_size=16), retain=st.booleans())
def test_agent_handlers_survive_anything(box: tuple[LoopThread, Any, Observer], errors: Records,
                                         suffix: str, payload: bytes, reply: str | None,
                                         correlation: bytes | None, retain: bool) -> None:
    lt, running, observer = box
    agent = running.agent
    own_reply = protocol.response_topic("xa-fuzz", "fuzzer")
    message = Inbound(topic=f"tiepdan/v1/d/xa-fuzz/{suffix}", payload=payload, qos=1,
                      retain=retain, mid=1, response_topic=own_reply if reply == "RES" else reply,
                      correlation_data=correlation, expiry=None)
    before_errors, before_answers = len(errors.messages), len(observer.on(own_reply))

    async def feed() -> None:
        agent._on_message(message)
        await asyncio.sleep(0)

    lt.run(feed())
    assert not running.task.done(), "the agent died"
    is_command = suffix.startswith("cmd/") and suffix.count("/") == 1
    # An empty retained document is how a controller clears one: not an error.
    clears = suffix == "state/desired" and payload == b""
    if _is_garbage(payload) and (is_command or suffix == "state/desired") and not clears:
        assert len(errors.messages) > before_errors, f"nothing logged for {suffix} {payload[:40]!r}"
    if is_command and reply == "RES" and _is_garbage(payload):
        lt.run(eventually(lambda: len(observer.on(own_reply)) > before_answers, timeout=5,
                          what="an error response"))
        answer = protocol.decode(observer.on(own_reply)[-1].payload, protocol.Response)
        assert not answer.ok and answer.error is not None
        assert answer.error.code == "bad_request"


def test_agent_still_answers_after_garbage_through_the_broker(
        box: tuple[LoopThread, Any, Observer]) -> None:
    lt, running, observer = box
    garbage = [b"", b"\xff\xfe", b"null", b"[]", b'{"id": 1}', b"x" * (protocol.MAX_PAYLOAD + 10)]

    async def storm() -> protocol.Response:
        for payload in garbage:
            for suffix in ("cmd/ping", "state/desired", "$state", "cmd/unknown"):
                await observer.link.publish(f"tiepdan/v1/d/xa-fuzz/{suffix}", payload)
        reply = protocol.response_topic("xa-fuzz", "fuzzer")
        command = protocol.Command(id="after-the-storm", ts=protocol.now_ms())
        await observer.link.publish(protocol.command_topic("xa-fuzz", "ping"),
                                    protocol.encode(command), response_topic=reply)
        found = await eventually(
            lambda: [m for m in observer.on(reply)
                     if protocol.decode(m.payload, protocol.Response).id == "after-the-storm"],
            what="the ping answer")
        return protocol.decode(found[0].payload, protocol.Response)

    answer = lt.run(storm())
    assert answer.ok
    assert not running.task.done()


@pytest.fixture
def central(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[LoopThread, Any]]:
    lt = LoopThread()
    cm = running_controller(make_controller_config(tmp_path, broker))
    controller = lt.run(cm.__aenter__())
    yield lt, controller
    lt.run(cm.__aexit__(None, None, None))
    lt.close()


controller_topics = st.one_of(
    st.sampled_from(["$birth", "$state", "tele/health", "state/reported", "evt/button",
                     "evt/alarm", "res/central", "tele/other", "jobs/x", "jobs/j1/update"]),
    st.text(alphabet="abc/$#+-", min_size=1, max_size=12),
)
devices = st.sampled_from(["xa-ok", "XA-BAD", "-x", "a" * 70, "xa-ok/extra"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(device=devices, suffix=controller_topics, payload=payloads)
def test_controller_ingest_survives_anything(central: tuple[LoopThread, Any], errors: Records,
                                             device: str, suffix: str, payload: bytes) -> None:
    lt, controller = central
    message = Inbound(topic=f"tiepdan/v1/d/{device}/{suffix}", payload=payload, qos=1,
                      retain=False, mid=1, response_topic=None, correlation_data=None,
                      expiry=None)
    before = len(errors.messages)

    async def feed() -> None:
        controller.ingest.on_message(message)

    lt.run(feed())
    if _is_garbage(payload) and payload and suffix in ("$birth", "tele/health", "evt/button"):
        assert len(errors.messages) > before
    assert not any(t.done() for t in controller._tasks), "a controller task died"


def test_controller_keeps_working_after_garbage_through_the_broker(
        tmp_path: Path, broker: Mosquitto, central: tuple[LoopThread, Any]) -> None:
    lt, controller = central

    async def storm() -> None:
        async with Observer(broker, "fuzz-box") as obs:
            for payload in (b"\x00", b"{}", b'{"seq": "x"}', b"[1,2]"):
                for suffix in ("$birth", "$state", "tele/health", "evt/button",
                               "state/reported", "res/central"):
                    await obs.link.publish(f"tiepdan/v1/d/xa-evil/{suffix}", payload)
        async with running_agent(make_agent_config(tmp_path, broker, "xa-good")):
            await eventually(lambda: (d := controller.registry.get("xa-good")) and d.online,
                             what="a real box registered after the storm")

    lt.run(storm(), timeout=60)
    assert controller.ingest.rejected >= 20
