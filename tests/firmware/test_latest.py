"""Newest wins: live queues drop what went stale instead of growing under CPU shortage."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from tiepdan.firmware.media.fanout import Fanout
from tiepdan.firmware.media.latest import (
    MAX_BACKLOG,
    DroppingQueue,
    is_h264_key,
    is_rtp_media,
)

IDR = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x65\x88"  # SPS, IDR slice
P_FRAME = b"\x00\x00\x00\x01\x41\x9a"


@dataclass(frozen=True)
class Packet:
    n: int
    key: bool


async def test_a_stale_live_queue_skips_to_the_newest_key_and_asks_for_one() -> None:
    requests = 0

    def on_key() -> None:
        nonlocal requests
        requests += 1

    fanout: Fanout[Packet] = Fanout("camera", is_key=lambda p: p.key, on_key_request=on_key)
    live = fanout.subscribe("call", capacity=8, max_age=0.05)
    archive = fanout.subscribe("recorder", capacity=32)
    for n, key in enumerate([True, False, False, True, False]):
        fanout.publish(Packet(n, key))
    await asyncio.sleep(0.1)  # the consumer was starved: everything waited too long
    requests_before = requests
    waiting = asyncio.ensure_future(live.get())
    await asyncio.sleep(0.01)
    # All of it was stale, the key frame 3 included: nothing older is handed out, the
    # subscriber asked for a key frame and skips to it.
    assert requests == requests_before + 1 and not waiting.done()
    fanout.publish(Packet(5, False))
    fanout.publish(Packet(6, True))
    fanout.publish(Packet(7, False))
    assert (await waiting).n == 6  # type: ignore[union-attr]
    assert (await live.get()).n == 7  # type: ignore[union-attr]
    assert live.dropped == 6
    # Stale, but a fresh key waits behind: start from it, no request needed.
    for n in range(8, 12):
        fanout.publish(Packet(n, False))
    await asyncio.sleep(0.1)
    fanout.publish(Packet(12, True))
    assert (await live.get()).n == 12  # type: ignore[union-attr]
    assert requests == requests_before + 1
    # A subscriber without max_age (the recorder) keeps everything.
    kept = [(await archive.get()).n for _ in range(13)]  # type: ignore[union-attr]
    assert kept == list(range(13))


async def test_a_fresh_live_queue_loses_nothing() -> None:
    fanout: Fanout[Packet] = Fanout("camera", is_key=lambda p: p.key)
    live = fanout.subscribe("call", capacity=8, max_age=5.0)
    for n in range(5):
        fanout.publish(Packet(n, n == 0))
    assert [(await live.get()).n for _ in range(5)] == list(range(5))  # type: ignore[union-attr]
    assert live.dropped == 0


def test_decoder_backlog_is_dropped_up_to_the_next_key_frame() -> None:
    error = threading.Event()
    h264 = SimpleNamespace(name="H264")
    frames = DroppingQueue("video", error)
    clock = iter(range(0, 10**9, 6000))  # 15 fps at 90 kHz
    # before any key: useless
    frames.put((h264, SimpleNamespace(data=P_FRAME, timestamp=next(clock))))
    assert frames.qsize() == 0 and error.is_set()
    error.clear()
    frames.put((h264, SimpleNamespace(data=IDR, timestamp=next(clock))))
    for _ in range(MAX_BACKLOG - 1):
        frames.put((h264, SimpleNamespace(data=P_FRAME, timestamp=next(clock))))
    assert frames.qsize() == MAX_BACKLOG  # the decoder is behind, but not too far
    # one too many: drop all, resync
    frames.put((h264, SimpleNamespace(data=P_FRAME, timestamp=next(clock))))
    assert frames.qsize() == 0 and error.is_set()  # error -> the receiver sends a PLI
    frames.put((h264, SimpleNamespace(data=P_FRAME, timestamp=next(clock))))
    assert frames.qsize() == 0
    frames.put((h264, SimpleNamespace(data=IDR, timestamp=next(clock))))
    assert frames.qsize() == 1
    frames.put(None)  # the receiver stopping always gets through
    assert frames.qsize() == 2


def test_a_frame_timed_before_one_already_received_is_dropped() -> None:
    """A late retransmission completes a picture seconds old after newer ones went through
    (aiortc's jitter buffer takes a packet far behind its head for a sender restart): it is
    neither decoded nor recorded. A clock that jumps far back is a restarted sender, kept."""
    h264 = SimpleNamespace(name="H264")
    recorded: list[int] = []
    frames = DroppingQueue("video", threading.Event(), tap=lambda _c, _d, ts: recorded.append(ts))
    second = 90_000
    base = 2**32 - 2 * second  # the 32-bit RTP clock wraps during the test
    for ts in (base, base + 6000, (base + 3 * second) % 2**32):
        frames.put((h264, SimpleNamespace(data=IDR, timestamp=ts)))
    frames.put((h264, SimpleNamespace(data=IDR, timestamp=base + 12000)))  # 2.9 s behind
    decoded = [frames.get_nowait()[1].timestamp for _ in range(frames.qsize())]
    assert decoded == recorded == [base, base + 6000, (base + 3 * second) % 2**32]
    assert frames.stale == 1
    restarted = (base + 3 * second - 600 * second) % 2**32  # ten minutes back: a new clock
    frames.put((h264, SimpleNamespace(data=IDR, timestamp=restarted)))
    frames.put((h264, SimpleNamespace(data=P_FRAME, timestamp=restarted + 6000)))
    decoded = [frames.get_nowait()[1].timestamp for _ in range(frames.qsize())]
    assert decoded == recorded[-2:] == [restarted, restarted + 6000]
    assert frames.stale == 1


def test_packet_kinds() -> None:
    assert is_h264_key(IDR) and not is_h264_key(P_FRAME) and not is_h264_key(b"")
    rtp = bytes([0x80, 96]) + bytes(10)
    rtcp_rr = bytes([0x81, 201]) + bytes(10)
    stun = bytes([0x00, 0x01]) + bytes(18)
    dtls = bytes([22, 254]) + bytes(11)
    assert is_rtp_media(rtp)
    assert not any(is_rtp_media(p) for p in (rtcp_rr, stun, dtls))


def test_a_lost_packet_stalls_the_jitter_buffer_for_max_gap_not_for_its_capacity(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    from tiepdan.firmware.media import latest

    clock = [100.0]
    monkeypatch.setattr(latest.time, "monotonic", lambda: clock[0])
    jitter = JitterBuffer(capacity=512, is_video=True)
    jitter.add = latest._gap_bounded(jitter)  # type: ignore[method-assign]

    def packet(seq: int) -> RtpPacket:
        rtp = RtpPacket(payload_type=96, sequence_number=seq, timestamp=3000 * (seq // 2))
        rtp._data = IDR if seq % 10 == 0 else P_FRAME  # type: ignore[attr-defined]
        return rtp

    out = []
    for seq in range(0, 40):
        if seq == 5:
            continue  # lost: the frame of packets 4-5 never completes
        clock[0] += 0.01
        _, frame = jitter.add(packet(seq))
        if frame is not None:
            out.append(frame.timestamp // 3000)
    # Frames 0 and 1 came out; then nothing until MAX_GAP_S (0.2 s = 20 packets here) had
    # passed, then the incomplete frame and the one after the hole were skipped...
    assert out[:2] == [0, 1]
    assert 2 not in out and out[2] > 3
    # ...and frames flow again well before the buffer's 512-packet capacity.
    assert out[-1] >= 18
