"""The adaptive-bitrate policy on a hand-driven clock, the encoder that follows it, and the seam
to the Pi's hardware encoder as far as a host without one allows."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import pytest
from aiortc import RTCRtpSender

from tiepdan.board.camera import open_camera
from tiepdan.board.camera.pi import VIDIOC_S_CTRL, set_encoder_bitrate
from tiepdan.board.profile import CameraSpec
from tiepdan.firmware.call.encoder import CameraEncoder
from tiepdan.firmware.media import bitrate
from tiepdan.firmware.media.bitrate import BitrateController, Budget, ladder
from tiepdan.firmware.media.h264 import H264Encoder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(clock: Clock, floor: int = 150_000, ceiling: int = 2_400_000) -> BitrateController:
    return BitrateController(ladder(1280, 720, 30, floor=floor, ceiling=ceiling), floor=floor,
                             ceiling=ceiling, clock=clock, name="test")


def reports(control: BitrateController, clock: Clock, count: int, loss: float = 0.0,
            rtt: float | None = 0.02) -> None:
    for _ in range(count):
        clock.now += 1.0
        control.on_report(loss, rtt)


def rembs(control: BitrateController, clock: Clock, value: int, seconds: float) -> None:
    """A REMB every half second for `seconds` (aiortc's receiver sends one about as often)."""
    for _ in range(int(seconds * 2)):
        control.on_remb(value)
        clock.now += 0.5
    control.on_remb(value)


def clean(control: BitrateController, clock: Clock, remb: int, seconds: int) -> None:
    """A clean receiver report and a REMB every second."""
    for _ in range(seconds):
        clock.now += 1.0
        control.on_report(0.0, 0.02)
        control.on_remb(remb)


def test_the_ladder_steps_size_then_frame_rate_with_floors_by_pixel_rate() -> None:
    rungs = ladder(1280, 720, 30, floor=150_000, ceiling=3_000_000)
    assert [(r.width, r.height, r.fps) for r in rungs] == [
        (1280, 720, 30), (852, 480, 30), (640, 360, 30), (640, 360, 15)]
    assert rungs[-1].floor == 150_000
    assert rungs[0].floor == 8 * 150_000  # 720p30 is 8x the pixels per second of 360p15
    assert [r.floor for r in rungs] == sorted((r.floor for r in rungs), reverse=True)
    # A ceiling under the top rung's floor shrinks the floors, never under the floor itself.
    modest = ladder(1280, 720, 30, floor=150_000, ceiling=600_000)
    assert modest[0].floor == 300_000 and modest[-1].floor == 150_000


def test_remb_bounds_the_target_within_floor_and_ceiling() -> None:
    clock = Clock()
    control = controller(clock)
    assert control.target == 2_400_000
    control.on_remb(500_000)
    assert control.target == 500_000
    control.on_remb(10_000)
    assert control.target == 150_000  # never under the floor
    control.on_remb(50_000_000)
    assert control.target == 2_400_000  # never over the ceiling
    clock.now += bitrate.REMB_STALE_S + 1
    control.on_remb(400_000)
    clock.now += bitrate.REMB_STALE_S + 1
    reports(control, clock, 1)
    assert control.target > 400_000  # a stale REMB bounds nothing


def test_receiver_reports_alone_cut_on_loss_and_queueing_and_grow_when_clean() -> None:
    clock = Clock()
    control = controller(clock)
    reports(control, clock, 1, loss=0.3)
    assert control.target == int(2_400_000 * (1 - 0.15))
    held = control.target
    reports(control, clock, 3, loss=0.05)  # between 2 and 10 %: hold
    assert control.target == held
    reports(control, clock, 1, loss=0.0, rtt=0.02 + bitrate.QUEUE_SLACK_S + 0.1)
    assert control.target == int(held * bitrate.DELAY_CUT)
    cut = control.target
    reports(control, clock, 2, loss=0.0)
    assert control.target > cut


def test_the_picture_steps_down_when_the_floor_cannot_hold_and_back_up_when_clean() -> None:
    clock = Clock()
    control = controller(clock)
    control.on_remb(300_000)  # under 480p's floor (~533k), over 360p30's (300k)
    assert control.rung_index == 0  # not at once: a dip is not a trend
    rembs(control, clock, 300_000, bitrate.STEP_DOWN_HOLD_S)
    assert control.rung_index == 1
    rembs(control, clock, 300_000, 3 * bitrate.STEP_DOWN_HOLD_S)
    assert control.rung == control.rungs[2] and control.rung.height == 360
    assert control.rung.fps == 30  # 300k keeps 360p at the full rate
    # The link clears and the REMB rises within reach of 480p: it steps up after a clean
    # hold, tries 480p's floor, and stays there while the estimate follows.
    clean(control, clock, 450_000, int(bitrate.STEP_UP_HOLD_S) - 1)
    assert control.rung_index == 2
    clean(control, clock, 450_000, 2)
    assert control.rung_index == 1
    assert control.target >= control.rung.floor  # the probe
    clean(control, clock, 700_000, 10)
    assert control.rung_index == 1 and control.target == 700_000
    assert control.steps == 3


def test_a_step_up_the_link_cannot_carry_doubles_the_next_wait() -> None:
    clock = Clock()
    control = controller(clock)
    rembs(control, clock, 300_000, 4 * bitrate.STEP_DOWN_HOLD_S)
    assert control.rung_index == 2
    clean(control, clock, 450_000, int(bitrate.STEP_UP_HOLD_S) + 1)
    assert control.rung_index == 1
    clock.now += 1
    control.on_report(0.2, 0.02)  # the bigger picture congests the link
    rembs(control, clock, 350_000, 2 * bitrate.STEP_DOWN_HOLD_S)
    assert control.rung_index == 2
    clean(control, clock, 450_000, int(bitrate.STEP_UP_HOLD_S) + 1)
    assert control.rung_index == 2  # it waits longer this time
    clean(control, clock, 450_000, int(bitrate.STEP_UP_HOLD_S))
    assert control.rung_index == 1


def test_retransmissions_get_a_share_of_the_target() -> None:
    clock = Clock()
    control = controller(clock)
    control.on_remb(200_000)
    budget = Budget(control)
    clock.now += 10.0
    taken = sum(budget.take() for _ in range(100))  # a NACK storm in one instant
    assert 0 < taken < 100
    assert budget.refused == 100 - taken
    clock.now += 1.0  # a second later: about RTX_SHARE of the target's worth again
    again = sum(budget.take() for _ in range(100))
    assert 0 < again <= max(2, 200_000 * bitrate.RTX_SHARE // Budget.PACKET_BITS + 1)


def test_a_reset_starts_from_the_ceiling_and_the_full_picture() -> None:
    clock = Clock()
    control = controller(clock)
    rembs(control, clock, 200_000, 8 * bitrate.STEP_DOWN_HOLD_S)
    assert control.rung_index == 3 and control.target == 200_000
    control.reset()
    assert control.rung_index == 0 and control.target == control.ceiling
    reports(control, clock, 1)
    assert control.target == control.ceiling  # the old REMB is forgotten


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        BitrateController(ladder(640, 360, 15, floor=100, ceiling=50), floor=100, ceiling=50)


def _frames(count: int, width: int = 320, height: int = 180) -> list[av.VideoFrame]:
    camera = open_camera(CameraSpec("synthetic", "pattern", width, height, 10, grain=8),
                         label="UBND ladder")
    from tiepdan.board.camera.synthetic import SyntheticCamera

    assert isinstance(camera, SyntheticCamera)
    frames = []
    for tick in range(count):
        frame = av.VideoFrame.from_ndarray(camera.render(tick), format="yuv420p")
        frame.pts, frame.time_base = tick * 9000, Fraction(1, 90000)
        frames.append(frame)
    return frames


def test_the_encoder_takes_a_new_bitrate_mid_stream() -> None:
    encoder = H264Encoder(320, 180, 10, 600_000, max_bitrate=600_000)
    frames = _frames(90)
    sizes = []
    for target, chunk in ((600_000, frames[:30]), (150_000, frames[30:60]),
                          (600_000, frames[60:])):
        encoder.set_bitrate(target)
        sizes.append(sum(p.size for f in chunk for p in encoder.encode(f)) * 8 / 3)
    assert sizes[1] < 0.5 * sizes[0]
    assert sizes[2] > 2 * sizes[1]
    encoder.set_bitrate(5_000_000)
    assert encoder.bitrate == 600_000  # capped at the VBV it opened with


async def test_the_camera_encoder_follows_the_controller_down_the_ladder() -> None:
    clock = Clock()
    control = BitrateController(ladder(320, 180, 10, floor=50_000, ceiling=600_000),
                                floor=50_000, ceiling=600_000, clock=clock)
    camera = open_camera(CameraSpec("synthetic", "pattern", 320, 180, 10, grain=8),
                         label="UBND ladder")
    encoder = CameraEncoder(camera, bitrate=600_000, keyframe_interval=4.0, control=control)
    packets = encoder.video.subscribe("test", capacity=200)
    running = asyncio.ensure_future(encoder.run())
    try:
        first = await asyncio.wait_for(packets.get(), 10)
        assert first is not None and first.is_keyframe
        assert encoder.sending()[:3] == (320, 180, 10)
        rembs(control, clock, 50_000, 8 * bitrate.STEP_DOWN_HOLD_S)  # down every step
        assert control.rung == control.rungs[-1]
        keys: list[av.Packet] = []
        while len(keys) < 1:
            packet = await asyncio.wait_for(packets.get(), 10)
            assert packet is not None
            if packet.is_keyframe:
                keys.append(packet)
        width, height, fps, target = encoder.sending()
        assert (width, height, fps) == (control.rung.width, control.rung.height,
                                        control.rung.fps)
        assert target == 50_000
        decoder = av.CodecContext.create("h264", "r")
        pictures = decoder.decode(keys[0])
        assert pictures and pictures[0].height == control.rung.height
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        packets.close()


def test_the_hardware_encoder_seam_refuses_what_is_not_an_encoder(
        caplog: pytest.LogCaptureFixture) -> None:
    # VIDIOC_S_CTRL is _IOWR('V', 28, struct v4l2_control), as <linux/videodev2.h> has it.
    assert (3 << 30) | (8 << 16) | (ord("V") << 8) | 28 == VIDIOC_S_CTRL
    with open("/dev/null", "rb+", buffering=0) as device:
        assert set_encoder_bitrate(device, 300_000) is False
    assert "camera_bitrate_refused" in caplog.text


async def test_the_tap_feeds_remb_and_reports_from_real_rtcp_and_ignores_the_rest() -> None:
    """`watch_feedback` on a real aiortc sender (aiortc's private hooks move between releases:
    this is where such a move shows), fed RTCP parsed from the wire format."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtp import (
        RTCP_PSFB_APP,
        RtcpPacket,
        RtcpPsfbPacket,
        RtcpReceiverInfo,
        RtcpRrPacket,
        pack_remb_fci,
    )

    from tiepdan.firmware.media.bitrate import watch_feedback

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()),
                                 [RTCCertificate.generateCertificate()])
    sender = RTCRtpSender("video", transport)
    clock = Clock()
    control = BitrateController(ladder(640, 360, 15, floor=100_000, ceiling=1_000_000),
                                floor=100_000, ceiling=1_000_000, clock=clock)
    watch_feedback(sender, control)

    def wire(packet: object) -> object:
        [parsed] = RtcpPacket.parse(bytes(packet))  # type: ignore[call-overload]
        return parsed

    await sender._handle_rtcp_packet(wire(RtcpPsfbPacket(  # type: ignore[arg-type]
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
        fci=pack_remb_fci(400_000, [sender._ssrc]))))
    assert control.remb is not None and abs(control.remb - 400_000) < 400_000 * 0.01
    assert control.target == control.remb
    # A REMB about another stream, and an application packet that is no REMB: ignored.
    await sender._handle_rtcp_packet(wire(RtcpPsfbPacket(  # type: ignore[arg-type]
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(150_000, [1234]))))
    await sender._handle_rtcp_packet(wire(RtcpPsfbPacket(  # type: ignore[arg-type]
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"NOPE\x00\x00\x00\x00")))
    assert control.target == control.remb
    # A receiver report about our stream with 30 % loss cuts the target.
    before = control.target
    await sender._handle_rtcp_packet(wire(RtcpRrPacket(  # type: ignore[arg-type]
        ssrc=1, reports=[RtcpReceiverInfo(ssrc=sender._ssrc, fraction_lost=77, packets_lost=9,
                                          highest_sequence=100, jitter=0, lsr=0, dlsr=0)])))
    assert control.reports == 1
    assert control.target < before
    # Retransmissions go through the budget (none were asked for: nothing refused yet).
    assert sender._retransmit.__name__ == "retransmit_within_budget"
