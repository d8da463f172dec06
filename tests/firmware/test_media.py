"""The encoded-stream fan-out: one producer, independent consumers, key-frame resync."""

from __future__ import annotations

from dataclasses import dataclass

from tiepdan.firmware.media.fanout import Fanout


@dataclass(frozen=True)
class Packet:
    n: int
    key: bool


def gop(start: int, length: int = 5) -> list[Packet]:
    return [Packet(start + i, i == 0) for i in range(length)]


async def test_subscribers_start_at_a_key_frame_and_each_get_every_packet() -> None:
    requests = 0

    def on_key() -> None:
        nonlocal requests
        requests += 1

    fanout: Fanout[Packet] = Fanout("camera", is_key=lambda p: p.key, on_key_request=on_key)
    fanout.publish(Packet(0, False))
    call, recorder = fanout.subscribe("call"), fanout.subscribe("recorder")
    assert requests == 2, "a joining subscriber asks the encoder for a key frame"
    fanout.publish(Packet(1, False))  # before any key frame: useless to a new decoder
    for packet in gop(2) + gop(7):
        fanout.publish(packet)
    fanout.close()
    got_call = [p.n async for p in call]
    got_recorder = [p.n async for p in recorder]
    assert got_call == got_recorder == list(range(2, 12))


async def test_a_slow_subscriber_drops_to_the_next_key_frame_without_slowing_others() -> None:
    requests = 0

    def on_key() -> None:
        nonlocal requests
        requests += 1

    fanout: Fanout[Packet] = Fanout("camera", is_key=lambda p: p.key, on_key_request=on_key)
    fast, slow = fanout.subscribe("call", capacity=100), fanout.subscribe("recorder", capacity=3)
    for start in range(0, 20, 5):
        for packet in gop(start):
            fanout.publish(packet)
        if start == 0:
            # The slow one consumes only now and then.
            assert [(await slow.get()).n for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    fanout.close()
    assert [p.n async for p in fast] == list(range(20))
    rest = [p.n async for p in slow]
    # After overrunning it resumed exactly at a key frame, never mid-GOP.
    assert rest and rest[0] % 5 == 0
    assert slow.dropped > 0 and fast.dropped == 0
    assert requests >= 3, "overrun asked for a key frame"


async def test_closing_a_subscription_ends_only_that_one() -> None:
    fanout: Fanout[int] = Fanout("mic")
    a, b = fanout.subscribe("a"), fanout.subscribe("b")
    fanout.publish(1)
    a.close()
    fanout.publish(2)
    fanout.close()
    assert [x async for x in a] == [1]
    assert [x async for x in b] == [1, 2]
    assert fanout.subscribers == 0
