"""The inline audio receive path: real Opus packets in, decoded frames out, in order, no gaps."""

from __future__ import annotations

import asyncio
import ctypes.util
import itertools
import json
import logging
import random
import sys
import wave
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from numpy.typing import NDArray

from chatsubo.peer import opus
from chatsubo.peer.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AfterSilence,
    AudioOut,
    EncodedAudioTrack,
    PcmBuffer,
    SilenceSource,
    SpatialMixer,
    ToneSource,
    WavRecorder,
)
from chatsubo.peer.receiving import InlineAudioPath, use_inline_audio_path
from tests.conftest import RunningServer
from tests.test_audio import TalkSpurts, audio_call, loopback_connection, peak_hz, rms, until
from tests.test_opus import encode, tone

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


def rtp(payloads: list[bytes]) -> list[RtpPacket]:
    """Opus payloads as consecutive RTP packets, across the sequence number wrap."""
    return [
        RtpPacket(
            payload_type=111,
            sequence_number=(65530 + i) & 0xFFFF,
            timestamp=1000 + i * FRAME_SAMPLES,
            payload=payload,
        )
        for i, payload in enumerate(payloads)
    ]


def through(
    packets: list[RtpPacket], dropped: Collection[int] = ()
) -> tuple[InlineAudioPath, list[av.AudioFrame]]:
    """A fresh path, the frames it made of ``packets`` less the ``dropped`` ones."""
    path, frames = new_path()
    for i, packet in enumerate(packets):
        if i not in dropped:
            path.add(packet)
    return path, drain(frames)


def voice(frames: int) -> NDArray[np.int16]:
    """Something like a voice: a vowel with vibrato, in syllables; libopus adds FEC to it."""
    t = np.arange(frames * FRAME_SAMPLES) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(150 + 20 * np.sin(2 * np.pi * 2 * t)) / SAMPLE_RATE
    vowel = sum(np.sin(h * phase) / h for h in range(1, 8))
    sound = vowel * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))
    pcm: NDArray[np.int16] = (sound / np.abs(sound).max() * 0.3 * 32767).astype(np.int16)
    return pcm


def every_frame(count: int) -> list[int]:
    """The pts of ``count`` frames that leave no 20 ms uncovered."""
    return [i * FRAME_SAMPLES for i in range(count)]


def snr_db(frame: av.AudioFrame, reference: av.AudioFrame) -> float:
    x, y = (f.to_ndarray().reshape(-1).astype(np.float64) for f in (frame, reference))
    return float(10 * np.log10(np.sum(y**2) / np.sum((x - y) ** 2)))


def fec_lib() -> opus.Libopus:
    lib = opus.libopus()
    assert lib is not None
    assert lib.knows_lbrr
    return lib


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


async def test_late_packets_are_dropped_and_their_frames_made_up() -> None:
    packets = await opus_packets(6)
    path, frames = new_path()
    for i in (0, 1, 3, 2, 4, 5):
        path.add(packets[i])
    decoded = drain(frames)
    # Frame 2 was made up before 3 was played; packet 2 itself is dropped, never played late.
    assert [f.pts // FRAME_SAMPLES for f in decoded] == [0, 1, 2, 3, 4, 5]
    assert (path.received, path.late, path.lost) == (5, 1, 1)
    assert path.concealed + path.recovered == 1


async def test_our_sender_adds_fec() -> None:
    packets = await opus_packets(8)
    assert any(fec_lib().has_fec(packet.payload) for packet in packets)


def test_lost_frames_are_rebuilt_from_fec_or_concealed() -> None:
    payloads = encode(voice(60))
    lib = fec_lib()
    # One lost packet whose next one carries FEC, then three in a row, likewise.
    single = next(j for j in range(20, 40) if lib.has_fec(payloads[j + 1]))
    run = next(j for j in range(single + 5, 55) if lib.has_fec(payloads[j + 3]))
    path, decoded = through(rtp(payloads), {single, run, run + 1, run + 2})
    assert (path.received, path.lost, path.recovered, path.concealed) == (56, 4, 2, 2)
    assert [f.pts for f in decoded] == every_frame(60)
    assert all(f.samples == FRAME_SAMPLES and len(f.layout.channels) == 1 for f in decoded)
    assert path.stats().recovered == 2


def test_without_fec_every_lost_frame_is_concealed() -> None:
    path, decoded = through(rtp(encode(voice(30), fec=False)), {10, 20, 21})
    assert (path.received, path.lost, path.recovered, path.concealed) == (27, 3, 0, 3)
    assert [f.pts for f in decoded] == every_frame(30)


def test_a_frame_rebuilt_from_fec_is_closer_to_the_original_than_plc() -> None:
    payloads = encode(voice(100))
    packets = rtp(payloads)
    lib = fec_lib()
    _, clean = through(packets)
    from_fec, from_plc = [], []
    for j in [j for j in range(20, 90) if lib.has_fec(payloads[j + 1])][:5]:
        fec_path, with_fec = through(packets, {j})
        # With the next one lost too, frame j can only be concealed.
        plc_path, with_plc = through(packets, {j, j + 1})
        assert (fec_path.recovered, plc_path.concealed, plc_path.recovered) == (1, 1, 1)
        from_fec.append(snr_db(with_fec[j], clean[j]))
        from_plc.append(snr_db(with_plc[j], clean[j]))
    assert np.mean(from_fec) > np.mean(from_plc) + 6, (from_fec, from_plc)


def test_a_long_gap_is_not_filled_but_time_carries_on() -> None:
    # 300 ms lost: past what is worth concealing (PLC fades to silence).
    path, decoded = through(rtp(encode(tone(40))), range(10, 25))
    assert (path.received, path.lost, path.concealed, path.recovered) == (25, 15, 0, 0)
    assert [f.pts for f in decoded] == every_frame(10) + every_frame(40)[25:]


def longest_quiet_run(pcm: NDArray[np.float32], below: float) -> int:
    """The most samples in a row quieter than ``below``."""
    quiet = np.concatenate(([0], (np.abs(pcm) < below).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(quiet))
    return int((edges[1::2] - edges[::2]).max(initial=0))


def test_no_gaps_or_clicks_at_5_percent_random_loss() -> None:
    packets = rtp(encode(tone(400)))
    rng = random.Random(5)
    dropped = {i for i in range(1, len(packets)) if rng.random() < 0.05}
    heard: list[NDArray[np.float32]] = []
    for lost in ((), dropped):
        path, decoded = through(packets, lost)
        assert [f.pts for f in decoded] == every_frame(400)
        # Mixed as a bot mixes what it hears, in stream time: the sink's timing is not tested.
        buffer = PcmBuffer(max_frames=len(decoded))
        for frame in decoded:
            buffer.push(frame)
        mixer = SpatialMixer()
        mixer.add("them", buffer, (0.0, 0.0))
        mixed = np.concatenate([mixer.mix()[:, 0] for _ in decoded])
        # Past the fade-in of a new voice and the decoder's start.
        heard.append(mixed[5 * FRAME_SAMPLES :])
    assert len(dropped) >= 15
    assert path.lost == path.concealed + path.recovered == len(dropped)
    clean, lossy = heard
    # A gap would be hundreds of samples of silence; a tone of this level is that
    # quiet for only two or three samples, around each zero crossing.
    assert longest_quiet_run(clean, 0.01) <= 6
    assert longest_quiet_run(lossy, 0.01) <= 6
    # A click is a jump between samples far beyond the tone's steepest slope.
    steepest = np.abs(np.diff(clean)).max()
    assert np.abs(np.diff(lossy)).max() < 1.5 * steepest
    assert abs(peak_hz(lossy) - 440) < 15


def test_a_stereo_stream_is_heard_in_mono_and_recovered() -> None:
    # What browsers send: stereo Opus, with FEC.
    payloads = encode(voice(30), "stereo")
    j = next(j for j in range(10, 28) if fec_lib().has_fec(payloads[j + 1]))
    path, decoded = through(rtp(payloads), {j})
    assert (path.lost, path.recovered) == (1, 1)
    assert [f.pts for f in decoded] == every_frame(30)
    assert all(len(f.layout.channels) == 1 for f in decoded)


def test_without_libopus_pyav_decodes_and_a_loss_stays_a_gap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(opus, "bundled_libopus", lambda: Path("/nonexistent/libopus.so.0"))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    opus.libopus.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, "chatsubo.peer.opus"):
            path, decoded = through(rtp(encode(tone(10))), {5})
    finally:
        opus.libopus.cache_clear()
    assert "will not be concealed" in caplog.text
    assert (path.received, path.lost, path.concealed, path.recovered) == (9, 1, 0, 0)
    assert [f.pts for f in decoded] == [i * FRAME_SAMPLES for i in (0, 1, 2, 3, 4, 6, 7, 8, 9)]
    assert all(len(f.layout.channels) == 1 for f in decoded)


async def test_without_libopus_pyav_encodes_and_silence_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opus, "bundled_libopus", lambda: Path("/nonexistent/libopus.so.0"))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    opus.libopus.cache_clear()
    try:
        track = EncodedAudioTrack(SilenceSource())
        # Past the 200 ms after which DTX would stop sending.
        packets = [await track.recv() for _ in range(15)]
        track.stop()
    finally:
        opus.libopus.cache_clear()
    assert [p.pts for p in packets] == every_frame(15)
    assert all(p.size > opus.DTX_MAX_BYTES for p in packets)


async def test_a_restarted_stream_is_followed() -> None:
    packets = await opus_packets(6)
    path, frames = new_path()
    path.add(packets[0])
    path.add(packets[1])
    # A sender that started over jumps far in sequence numbers, back or ahead: follow it.
    packets[2].sequence_number = (packets[1].sequence_number - 5000) & 0xFFFF
    packets[3].sequence_number = (packets[2].sequence_number + 1) & 0xFFFF
    packets[4].sequence_number = (packets[3].sequence_number + 5000) & 0xFFFF
    packets[5].sequence_number = (packets[4].sequence_number + 1) & 0xFFFF
    for packet in packets[2:]:
        path.add(packet)
    assert len(drain(frames)) == 6
    assert path.late == path.lost == 0


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
    installed: list[InlineAudioPath | None] = []

    def install(track: MediaStreamTrack) -> None:
        (receiver,) = [r for r in answerer.getReceivers() if r.track is track]
        installed.append(use_inline_audio_path(receiver))

    async with audio_call(AudioOut(ToneSource(440.0)), answerer, install) as received:
        await until(lambda: bool(received) and received[0].frames > 50, "a second of audio")
        (path,) = installed
        assert path is not None
        assert path.received >= 50
        audio_in = received[0]
        assert audio_in.gaps == 0
        assert abs(peak_hz(audio_in.take(4800)) - 440) < 15
    await until(lambda: received[0].ended.is_set(), "the track to end with the call")


def installer(
    answerer: RTCPeerConnection, installed: list[InlineAudioPath]
) -> Callable[[MediaStreamTrack], None]:
    """A ``track`` handler giving the answerer's receiver an inline path, kept in ``installed``."""

    def install(track: MediaStreamTrack) -> None:
        (receiver,) = [r for r in answerer.getReceivers() if r.track is track]
        path = use_inline_audio_path(receiver)
        assert path is not None
        installed.append(path)

    return install


#: The steepest step between samples of the 0.3 full-scale 440 Hz tone, in full scale.
TONE_SLOPE = 0.3 * 2 * np.pi * 440 / SAMPLE_RATE


async def test_silence_is_not_sent_and_talk_resumes_without_a_click() -> None:
    """Talk spurts through the real track and receive path, played on an ideal clock."""
    track = EncodedAudioTrack(TalkSpurts(on=0.4, off=0.8))
    # Two spurts and the start of a third: 2.5 s in real time, as the track paces itself.
    packets: list[av.Packet[Any]] = []
    pts: list[int] = []
    while not pts or pts[-1] < 2.5 * SAMPLE_RATE:
        packet = await track.recv()
        assert packet.pts is not None
        packets.append(packet)
        pts.append(packet.pts)
    track.stop()
    assert all(packet.size > opus.DTX_MAX_BYTES for packet in packets)
    assert all(t % FRAME_SAMPLES == 0 for t in pts)
    resumed = [b for a, b in itertools.pairwise(pts) if b - a > FRAME_SAMPLES]
    # Each silence: libopus's 200 ms and hangover, then a refresh every 400 ms.
    assert len(resumed) >= 2
    assert len(packets) < 0.6 * pts[-1] / FRAME_SAMPLES

    # Numbered as aiortc's sender numbers them: one sequence number each, the
    # timestamp from the pts, here across the wrap of both.
    path, frames = new_path()
    for i, (packet, t) in enumerate(zip(packets, pts, strict=True)):
        path.add(
            RtpPacket(
                payload_type=111,
                sequence_number=(65500 + i) & 0xFFFF,
                timestamp=(0xFFFFFFFF - 50_000 + t) & 0xFFFFFFFF,
                payload=bytes(packet),
            )
        )
    decoded = drain(frames)
    assert (path.received, path.lost, path.concealed, path.late) == (len(packets), 0, 0, 0)
    assert [f.pts for f in decoded] == pts
    assert [f.pts for f in decoded if isinstance(f.opaque, AfterSilence)] == resumed

    # Heard as a listener hears it: every frame on time, one taken every 20 ms.
    buffer = PcmBuffer(slack=1)
    arriving = {f.pts: f for f in decoded}
    heard = []
    # Up to the last frame, which the stream's end would cut short.
    for t in range(0, pts[-1] + FRAME_SAMPLES, FRAME_SAMPLES):
        if t in arriving:
            buffer.push(arriving[t])
        heard.append(buffer.take(FRAME_SAMPLES))
    pcm = np.concatenate(heard)

    def at(start: float, end: float) -> NDArray[np.float32]:
        # The slack delays everything by one frame.
        delay = FRAME_SAMPLES / SAMPLE_RATE
        return pcm[round((start + delay) * SAMPLE_RATE) : round((end + delay) * SAMPLE_RATE)]

    for spurt in range(3):
        start = spurt * 1.2
        assert rms(at(start + 0.05, start + 0.1)) > 0.15, f"spurt {spurt} is heard from its start"
        if spurt < 2:
            assert rms(at(start + 0.05, start + 0.35)) > 0.15
            assert abs(peak_hz(at(start, start + 0.4)) - 440) < 15
            assert np.abs(at(start + 0.45, start + 1.15)).max() < 0.01, "silence between"
    # The tone fades in and out in 5 ms: a click is a step far steeper than the tone
    # (whose decoded steepest is a little steeper than the source's).
    assert np.abs(np.diff(pcm)).max() < 1.5 * TONE_SLOPE


async def test_a_silent_voice_sends_a_packet_every_400_ms_at_most() -> None:
    answerer = loopback_connection()
    installed: list[InlineAudioPath] = []
    out = AudioOut(SilenceSource())
    async with audio_call(out, answerer, installer(answerer, installed)) as received:
        await until(lambda: bool(received) and received[0].frames > 0, "the first frame")
        (path,) = installed
        audio_in = received[0]
        loop = asyncio.get_running_loop()
        first = audio_in.first_frame_at
        assert first is not None
        # libopus sends 200 ms of silence before it stops sending.
        await until(lambda: loop.time() - first > 0.5, "DTX to set in")
        before, start = path.received, loop.time()
        await until(lambda: loop.time() - start > 2.0, "2 s of silence")
        assert path.received - before <= 2.0 / 0.4 + 1, "at most a comfort-noise refresh"
        assert path.lost == 0
        assert audio_in.gaps == 0
        assert audio_in.silences >= 4
        assert audio_in.level_dbfs < -60


async def test_talk_spurts_come_through_a_real_call_whole(tmp_path: Path) -> None:
    answerer = loopback_connection()
    installed: list[InlineAudioPath] = []
    out = AudioOut(TalkSpurts(on=1.0, off=1.5))
    record = tmp_path / "heard.wav"
    async with audio_call(out, answerer, installer(answerer, installed)) as received:
        await until(lambda: bool(received) and received[0].frames > 0, "the first frame")
        (path,) = installed
        audio_in = received[0]
        mixer = SpatialMixer()
        mixer.add("talker", audio_in, (0.0, 0.0))
        recorder = WavRecorder(record, mixer)
        loop = asyncio.get_running_loop()
        first = audio_in.first_frame_at
        assert first is not None
        # Three spurts and the two silences between them.
        await until(lambda: loop.time() - first > 6.2, "three talk spurts", deadline=15.0)
        await recorder.stop()
        elapsed = loop.time() - first
        assert (path.lost, path.concealed, path.recovered, path.late) == (0, 0, 0, 0)
        assert audio_in.gaps == audio_in.missing_samples == 0
        assert audio_in.silences >= 2
        assert audio_in.silent_samples >= 2 * SAMPLE_RATE, "a second or more of each silence"
        assert path.received < 0.7 * elapsed * 50

    with wave.open(str(record)) as wav:
        heard = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)[:, 0]
    pcm = heard.astype(np.float32) / 32768
    # In blocks of 10 ms: a spurt starts where it gets loud after half a second of quiet.
    block = SAMPLE_RATE // 100
    loud = [rms(pcm[i : i + block]) > 0.05 for i in range(0, len(pcm) - block, block)]
    onsets = [i for i, on in enumerate(loud) if on and not any(loud[max(0, i - 50) : i])]
    assert len(onsets) == 3, onsets
    # A spurt every 2.5 s; a stall of this shared machine may hold one back a little.
    assert all(2.3 < (b - a) / 100 < 2.7 for a, b in itertools.pairwise(onsets))
    for onset in onsets:
        # The recording runs in real time: a stall of this shared machine leaves a
        # hole in it (whereas no frame was missing, as the counters say).
        spurt = loud[onset : onset + 100]
        assert sum(spurt) >= 75, f"the second of tone at {onset / 100} s"
        tone = pcm[onset * block : (onset + 100) * block]
        assert abs(peak_hz(tone) - 440) < 15


def test_an_unexpected_receiver_keeps_its_own_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "chatsubo.peer.receiving"):
        assert use_inline_audio_path(object()) is None
    assert "keeping its own audio path" in caplog.text


async def bot_events(server: RunningServer, *args: str) -> list[dict[str, Any]]:
    """What a bot run with ``args`` reported, one JSON event a line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatsubo.client", "--server", server.url, "--json", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def test_a_bot_reports_what_it_receives_from_each_peer(server: RunningServer) -> None:
    talker, listener = await asyncio.gather(
        bot_events(server, "--name", "Talker", "--audio", "tone:440", "--duration", "6"),
        bot_events(server, "--name", "Listener", "--audio", "silence", "--duration", "5"),
    )
    (talker_id,) = {e["peer"] for e in talker if e["event"] == "joined"}
    reports = [e for e in listener if e["event"] == "audio"]
    # Every 2 s while connected, and once more on leaving.
    assert len(reports) >= 2, listener
    assert {e["peer"] for e in reports} == {talker_id}
    fields = {"event", "bot", "ts", "peer", "received", "lost", "concealed", "recovered", "late"}
    assert all(set(e) == fields for e in reports)
    received = [e["received"] for e in reports]
    assert received == sorted(received)
    last = reports[-1]
    assert last["received"] >= 100, "two seconds of the talker's voice at least"
    assert last["lost"] >= last["concealed"] + last["recovered"]
    # The last report is the link's last word, as the bot leaves.
    assert [e["event"] for e in listener][-3:] == ["audio", "peer_disconnected", "left"]
