"""Audio: sources, the encode-once track, a real loopback call, the mixer and its sinks."""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from numpy.typing import NDArray

from chatsubo.peer.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioIn,
    AudioOut,
    AudioSource,
    AudioUnavailable,
    EncodedAudioTrack,
    PcmBuffer,
    SilenceSource,
    SpatialMixer,
    Speaker,
    ToneSource,
    WavRecorder,
    parse_source,
)
from chatsubo.space import BAR

DEADLINE = 10.0


async def until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``check`` until it holds, failing after ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def peak_hz(samples: NDArray[Any]) -> float:
    """The strongest frequency in a stretch of 48 kHz audio."""
    x = np.asarray(samples, np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float(freqs[int(np.argmax(spectrum))])


def read_frames(source: AudioSource, count: int) -> NDArray[np.int16]:
    return np.concatenate([source.read() for _ in range(count)])


def module_tasks() -> list[asyncio.Task[Any]]:
    """Tasks this module's classes (and the relay they own) started and left running."""
    names = ("AudioIn", "WavRecorder", "Speaker")
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done()
        and (
            t.get_name().startswith(names)
            or "MediaRelay" in getattr(t.get_coro(), "__qualname__", "")
        )
    ]


class TalkSpurts(AudioSource):
    """A tone said in spurts: ``on`` seconds of it, then ``off`` seconds of digital silence.

    Each spurt fades in and out over 5 ms, so that the source itself never clicks.
    """

    FADE = SAMPLE_RATE // 200

    def __init__(self, on: float, off: float, hz: float = 440.0) -> None:
        self.on = round(on * SAMPLE_RATE)
        self.period = self.on + round(off * SAMPLE_RATE)
        self.hz = hz
        self._n = 0

    def read(self) -> NDArray[np.int16]:
        n = self._n + np.arange(FRAME_SAMPLES)
        self._n += FRAME_SAMPLES
        into = n % self.period
        fade = np.clip(np.minimum(into, self.on - into) / self.FADE, 0.0, 1.0)
        wave = np.sin(2 * np.pi * self.hz * n / SAMPLE_RATE) * fade * (into < self.on)
        pcm: NDArray[np.int16] = (wave * 0.3 * 32767).astype(np.int16)
        return pcm


def test_source_specs_parse() -> None:
    assert isinstance(parse_source("silence"), SilenceSource)
    tone = parse_source("tone:440")
    assert isinstance(tone, ToneSource)
    assert tone.hz == 440.0
    pitches = {
        t.hz for t in (parse_source("tone", seed=s) for s in range(5)) if isinstance(t, ToneSource)
    }
    assert len(pitches) == 5, "bots with different seeds should differ in pitch"


def test_tone_has_its_pitch_and_silence_is_zero() -> None:
    frame = parse_source("tone:440").read()
    assert frame.shape == (FRAME_SAMPLES,)
    assert frame.dtype == np.int16
    assert abs(peak_hz(read_frames(parse_source("tone:440"), 10)) - 440) < 5
    silence = parse_source("silence").read()
    assert silence.shape == (FRAME_SAMPLES,)
    assert not silence.any()


@pytest.mark.parametrize("spec", ["tone:abc", "tone:-3", "tone:30000", "nope", "/no/such/file.wav"])
def test_bad_specs_say_what_is_wrong(spec: str) -> None:
    with pytest.raises(ValueError, match=r"tone|file"):
        parse_source(spec)


def test_file_that_is_not_audio_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.wav"
    path.write_bytes(b"not a sound file at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.wav"):
        parse_source(str(path))


def test_file_source_is_resampled_to_48k_mono_and_loops(tmp_path: Path) -> None:
    # 0.25 s of a 300 Hz tone, 44.1 kHz stereo: both rate and layout need converting.
    rate = 44100
    t = np.arange(int(rate * 0.25)) / rate
    mono = (np.sin(2 * np.pi * 300 * t) * 10000).astype(np.int16)
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(mono, 2).tobytes())
    source = parse_source(str(path))
    pcm = read_frames(source, 30)  # 0.6 s: more than the file, so it must loop
    assert pcm.dtype == np.int16
    assert len(pcm) == 30 * FRAME_SAMPLES
    assert abs(peak_hz(pcm[:9600]) - 300) < 10
    assert np.abs(pcm[-FRAME_SAMPLES:]).max() > 5000


async def test_encoded_track_gives_paced_opus_packets() -> None:
    track = EncodedAudioTrack(ToneSource(440.0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    packets = [await track.recv() for _ in range(25)]
    elapsed = loop.time() - start
    track.stop()

    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [i * FRAME_SAMPLES for i in range(25)]
    assert all(p.time_base == Fraction(1, 48000) for p in packets)
    assert elapsed >= 0.45, "the track must pace itself to real time"
    assert all(p.size < 200 for p in packets), "about 32 kbit/s: ~80 bytes per 20 ms"

    decoder: Any = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "mono"
    decoder.format = "s16"
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)])
    assert abs(peak_hz(pcm[-9600:]) - 440) < 10


async def test_naive_voice_relays_raw_frames_for_each_sender_to_encode() -> None:
    out = AudioOut(ToneSource(440.0), encode_once=False)
    first, second = out.subscribe(), out.subscribe()
    try:
        frames = [await first.recv() for _ in range(3)]
        other = await second.recv()
    finally:
        out.stop()
    assert all(isinstance(f, av.AudioFrame) for f in [*frames, other])
    assert [f.pts for f in frames] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]
    assert isinstance(frames[0], av.AudioFrame)
    assert frames[0].samples == FRAME_SAMPLES


async def test_stopped_track_ends() -> None:
    track = EncodedAudioTrack(SilenceSource())
    await track.recv()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def loopback_connection() -> RTCPeerConnection:
    """A peer connection with host candidates only: no public STUN server to wait for."""
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


async def connect(
    sender: MediaStreamTrack,
    on_track: Callable[[MediaStreamTrack], None],
    answerer: RTCPeerConnection | None = None,
) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """Two real peer connections on loopback, one sending ``sender`` to ``answerer``."""
    a, b = loopback_connection(), answerer or loopback_connection()
    a.addTrack(sender)
    b.on("track", on_track)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    return a, b


@contextlib.asynccontextmanager
async def audio_call(
    out: AudioOut,
    answerer: RTCPeerConnection | None = None,
    on_track: Callable[[MediaStreamTrack], None] | None = None,
) -> AsyncIterator[list[AudioIn]]:
    """A loopback call sending ``out``; yields the received track's AudioIn, once it exists.

    ``on_track`` sees the remote track before it is read. Everything is closed
    on the way out.
    """
    received: list[AudioIn] = []

    def read(track: MediaStreamTrack) -> None:
        if on_track is not None:
            on_track(track)
        received.append(AudioIn(track, "a"))

    a, b = await connect(out.subscribe(), read, answerer)
    try:
        yield received
    finally:
        await a.close()
        await b.close()
        out.stop()
        for audio_in in received:
            await audio_in.stop()


async def test_loopback_call_delivers_every_frame_with_the_pitch() -> None:
    async with audio_call(AudioOut(ToneSource(440.0))) as received:
        await until(lambda: bool(received) and received[0].frames > 0, "the first frame")
        audio_in = received[0]
        first = audio_in.first_frame_at
        assert first is not None
        loop = asyncio.get_running_loop()
        await until(lambda: loop.time() - first > 1.5, "1.5 s of audio")
        periods = (loop.time() - first) / 0.02
        assert audio_in.frames >= 0.95 * periods, (audio_in.frames, periods)
        assert audio_in.gaps == 0
        assert len(module_tasks()) == 2, "the AudioIn reader and the relay's reader run"
        assert audio_in.level_dbfs > -20
        assert abs(peak_hz(audio_in.take(4800)) - 440) < 15
    await until(lambda: not module_tasks(), "the module's tasks to end")
    assert received[0].ended.is_set()


def stereo_tone_frame(hz: float) -> av.AudioFrame:
    """A frame as aiortc delivers it: s16, interleaved stereo, 960 samples at 48 kHz."""
    mono = ToneSource(hz).read()
    frame = av.AudioFrame.from_ndarray(
        np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = SAMPLE_RATE
    return frame


def fed_buffer() -> PcmBuffer:
    buffer = PcmBuffer()
    buffer.push(stereo_tone_frame(440.0))
    return buffer


def rms(x: NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def settled_mix(position: tuple[float, float], listener: tuple[float, float]) -> NDArray[Any]:
    """The mix of one source once its fade-in is over (its second frame)."""
    mixer = SpatialMixer(listener=listener)
    buffer = fed_buffer()
    mixer.add("peer", buffer, position)
    mixer.mix()
    buffer.push(stereo_tone_frame(440.0))
    return mixer.mix()


def test_mixer_pans_and_attenuates() -> None:
    mixer = SpatialMixer(listener=(10.0, 8.0))
    mixer.add("left", fed_buffer(), (7.0, 8.0))
    mix = mixer.mix()
    assert mix.shape == (FRAME_SAMPLES, 2)
    assert rms(mix[:, 0]) > 2 * rms(mix[:, 1])

    def loudness(position: tuple[float, float]) -> float:
        return rms(settled_mix(position, listener=(10.0, 8.0)))

    assert loudness((10.0, 9.0)) > 3 * loudness((10.0, 15.0)) > 0

    # With nothing buffered a source adds silence, not stale audio.
    assert not mixer.mix().any()


def test_a_source_at_one_meter_plays_at_full_gain() -> None:
    mix = settled_mix((10.0, 7.0), listener=(10.0, 8.0))
    source = rms(ToneSource(440.0).read() / 32768)
    # Equal-power panning: the two channels' powers add up to the source's.
    assert rms(mix[:, 0]) ** 2 + rms(mix[:, 1]) ** 2 == pytest.approx(source**2, rel=1e-3)


def test_a_source_beyond_the_hearing_range_contributes_nothing() -> None:
    hearing = BAR.distance_model.hearing_range
    assert not settled_mix((10.0 + hearing + 0.5, 8.0), listener=(10.0, 8.0)).any()
    assert not settled_mix((10.0, 8.0 + hearing), listener=(10.0, 8.0)).any()


def test_walking_away_glides_the_gain_down_within_a_frame() -> None:
    mixer = SpatialMixer(listener=(10.0, 8.0))
    buffer = fed_buffer()
    mixer.add("peer", buffer, (10.0, 7.0))
    mixer.mix()
    buffer.push(stereo_tone_frame(440.0))
    mixer.move("peer", (10.0, 30.0))
    fading = mixer.mix()[:, 0]
    # From full towards silence across the frame, not at once.
    assert rms(fading[:240]) > 2 * rms(fading[-240:]) > 0


def test_pcm_buffer_level() -> None:
    buffer = PcmBuffer()
    assert buffer.level_dbfs == -100.0
    buffer.push(stereo_tone_frame(440.0))
    # A sine at 0.3 of full scale: 20*log10(0.3/sqrt(2)) is about -13.5 dBFS.
    assert -15 < buffer.level_dbfs < -12


def sounddevice_works() -> bool:
    try:
        import sounddevice

        return bool(sounddevice.query_devices())
    except Exception:
        return False


async def test_mic_and_speaker_without_portaudio_are_unavailable() -> None:
    if sounddevice_works():
        pytest.skip("PortAudio and a sound device are present here")
    with pytest.raises(AudioUnavailable) as mic:
        parse_source("mic")
    with pytest.raises(AudioUnavailable) as speaker:
        Speaker(SpatialMixer())
    for error in (mic.value, speaker.value):
        message = str(error)
        assert "\n" not in message
        assert "PortAudio" in message or "device" in message


class ToneFeed:
    """A tone source handed straight to the mixer, counting how often it is pulled."""

    def __init__(self, hz: float) -> None:
        self.source = ToneSource(hz)
        self.pulls = 0

    def take(self, n: int) -> NDArray[np.float32]:
        self.pulls += 1
        return (self.source.read()[:n] / 32768).astype(np.float32)


async def test_wav_recorder_writes_the_mix(tmp_path: Path) -> None:
    feed = ToneFeed(440.0)
    mixer = SpatialMixer(listener=(5.0, 5.0))
    mixer.add("bot", feed, (4.0, 5.0))
    path = tmp_path / "mix.wav"
    recorder = WavRecorder(path, mixer)
    await until(lambda: feed.pulls >= 15, "15 mixes")
    await recorder.stop()
    assert not module_tasks()

    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2
        assert w.getsampwidth() == 2
        assert w.getframerate() == SAMPLE_RATE
        frames = w.getnframes()
        data = np.frombuffer(w.readframes(frames), "<i2").reshape(-1, 2)
    assert frames >= 15 * FRAME_SAMPLES
    assert rms(data[:, 0]) > 1000
    assert rms(data[:, 0]) > rms(data[:, 1]), "the bot stands to the listener's left"
    assert abs(peak_hz(data[:9600, 0]) - 440) < 10


def test_a_source_is_silent_until_its_position_is_known() -> None:
    mixer = SpatialMixer(listener=(10.0, 8.0))
    buffer = fed_buffer()
    mixer.add("peer", buffer, None)
    assert not mixer.mix().any()
    buffer.push(stereo_tone_frame(440.0))
    mixer.move("peer", (10.0, 7.0))
    assert mixer.mix().any()


def test_a_buffer_with_slack_plays_a_late_frame_without_a_gap() -> None:
    """A concealed frame arrives with the next packet: one frame of slack covers it."""
    buffer = PcmBuffer(slack=1)
    buffer.push(stereo_tone_frame(440.0))
    assert not buffer.take(FRAME_SAMPLES).any()
    buffer.push(stereo_tone_frame(440.0))
    played = [buffer.take(FRAME_SAMPLES)]
    # The next frame is lost: it comes together with the one after.
    played.append(buffer.take(FRAME_SAMPLES))
    buffer.push(stereo_tone_frame(440.0))
    buffer.push(stereo_tone_frame(440.0))
    played += [buffer.take(FRAME_SAMPLES), buffer.take(FRAME_SAMPLES)]
    assert all(rms(frame) > 0.1 for frame in played)
    # Run dry, it waits for the slack again rather than stutter frame by frame.
    assert rms(buffer.take(FRAME_SAMPLES)) == 0.0
    buffer.push(stereo_tone_frame(440.0))
    assert rms(buffer.take(FRAME_SAMPLES)) == 0.0
