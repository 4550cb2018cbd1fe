"""The inline audio receive path: real Opus packets in, decoded frames out, in order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from chatsubo.peer.audio import FRAME_SAMPLES, AudioOut, EncodedAudioTrack, ToneSource
from chatsubo.peer.receiving import InlineAudioPath, use_inline_audio_path
from tests.test_audio import audio_call, loopback_connection, peak_hz, until

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


async def opus_packets(count: int, hz: float = 440.0) -> list[RtpPacket]:
    """``count`` consecutive RTP packets of a real Opus-encoded tone."""
    track = EncodedAudioTrack(ToneSource(hz))
    packets = []
    for i in range(count):
        encoded = await track.recv()
        packets.append(
            RtpPacket(
                payload_type=111,
                sequence_number=(65530 + i) & 0xFFFF,
                timestamp=1000 + i * FRAME_SAMPLES,
                payload=bytes(encoded),
            )
        )
    track.stop()
    return packets


def new_path() -> tuple[InlineAudioPath, asyncio.Queue[Any]]:
    frames: asyncio.Queue[Any] = asyncio.Queue()
    return InlineAudioPath({111: OPUS}, frames), frames


def drain(frames: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not frames.empty():
        out.append(frames.get_nowait())
    return out


async def test_each_packet_is_decoded_on_arrival_across_the_sequence_wrap() -> None:
    packets = await opus_packets(20)
    path, frames = new_path()
    for packet in packets:
        assert path.add(packet) == (False, None), "nothing is left for aiortc's decoder thread"
        # Decoded at once: one more frame waits with every packet added.
        assert frames.qsize() >= 1
    decoded = drain(frames)
    assert len(decoded) == 20
    assert [f.pts for f in decoded] == [i * FRAME_SAMPLES for i in range(20)]
    assert all(len(f.layout.channels) == 1 and f.samples == FRAME_SAMPLES for f in decoded)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in decoded[5:]])
    assert abs(peak_hz(pcm) - 440) < 15


async def test_late_packets_are_dropped_and_gaps_skipped() -> None:
    packets = await opus_packets(6)
    path, frames = new_path()
    for i in (0, 1, 3, 2, 4, 5):
        path.add(packets[i])
    decoded = drain(frames)
    # Packet 2 came after 3 had been played: it is dropped, never played late.
    assert [f.pts // FRAME_SAMPLES for f in decoded] == [0, 1, 3, 4, 5]
    assert path.late == 1


async def test_a_restarted_stream_is_followed() -> None:
    packets = await opus_packets(4)
    path, frames = new_path()
    path.add(packets[0])
    path.add(packets[1])
    # A sender that started over jumps far back in sequence numbers: follow it.
    packets[2].sequence_number = (packets[1].sequence_number - 5000) & 0xFFFF
    packets[3].sequence_number = (packets[2].sequence_number + 1) & 0xFFFF
    path.add(packets[2])
    path.add(packets[3])
    assert len(drain(frames)) == 4
    assert path.late == 0


async def test_unknown_payloads_and_garbage_are_dropped() -> None:
    packets = await opus_packets(2)
    path, frames = new_path()
    first = packets[0].sequence_number
    stranger = RtpPacket(payload_type=96, sequence_number=first - 2, payload=b"\x00\x01")
    path.add(stranger)
    garbage = RtpPacket(payload_type=111, sequence_number=first - 1, payload=b"\xff" * 3)
    path.add(garbage)
    assert path.undecodable == 1
    assert drain(frames) == []
    # The stream carries on as if nothing had happened.
    path.add(packets[0])
    path.add(packets[1])
    assert len(drain(frames)) == 2


async def test_installs_on_a_real_receiver_and_a_call_still_delivers() -> None:
    answerer = loopback_connection()
    installed: list[bool] = []

    def install(track: MediaStreamTrack) -> None:
        (receiver,) = [r for r in answerer.getReceivers() if r.track is track]
        installed.append(use_inline_audio_path(receiver))

    async with audio_call(AudioOut(ToneSource(440.0)), answerer, install) as received:
        await until(lambda: bool(received) and received[0].frames > 50, "a second of audio")
        assert installed == [True]
        audio_in = received[0]
        assert audio_in.gaps == 0
        assert abs(peak_hz(audio_in.take(4800)) - 440) < 15
    await until(lambda: received[0].ended.is_set(), "the track to end with the call")


def test_an_unexpected_receiver_keeps_its_own_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "chatsubo.peer.receiving"):
        assert use_inline_audio_path(object()) is False
    assert "keeping its own audio path" in caplog.text
