"""Audio for Python peers: sources, an encode-once sending track, receivers and a spatial mix.

Sending costs little per extra peer: a peer encodes its voice ONCE
(:class:`EncodedAudioTrack` hands Opus ``av.Packet`` objects to aiortc, whose
``RTCRtpSender`` then only packetizes them) and fans the packets out to every
connection through one ``MediaRelay`` (:class:`AudioOut`). Silence costs
almost nothing: with DTX, a silent source sends one small packet every 400 ms
instead of fifty a second.

Receiving: every remote track must be read or aiortc's decoded-frame queue
grows without bound; :class:`AudioIn` reads one, measures it and keeps the last
few frames for a :class:`SpatialMixer`, whose stereo mix goes to a
:class:`WavRecorder` or a :class:`Speaker`.

Everything here speaks 48 kHz: sources give 20 ms mono s16 frames of 960
samples, the mixer gives 960 stereo float32 samples per tick.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import wave
from abc import ABC, abstractmethod
from collections.abc import Callable
from fractions import Fraction
from types import ModuleType
from typing import Any, Protocol

import av
import numpy as np
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from ..space import BAR, OPUS_BITRATE, DistanceModel
from . import opus

logger = logging.getLogger(__name__)

SAMPLE_RATE = opus.SAMPLE_RATE
FRAME_SAMPLES = 960
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
TIME_BASE = Fraction(1, SAMPLE_RATE)

#: Semitones above 220 Hz of a pentatonic scale, so that bots in a room sound distinct
#: yet never clash.
_PENTATONIC = (0, 2, 4, 7, 9, 12, 14, 16, 19, 21)
_TONE_AMPLITUDE = 0.3
#: When the event loop stalls for longer than this, the send clock is re-anchored
#: instead of bursting the backlog onto the network.
_MAX_LAG = 0.1

Pcm = NDArray[np.int16]
Mono = NDArray[np.float32]
Stereo = NDArray[np.float32]


class AudioUnavailable(RuntimeError):
    """No sound device here: PortAudio is missing or there is no usable device."""


def _sounddevice() -> ModuleType:
    """Import sounddevice on first use: it raises OSError when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:
        raise AudioUnavailable(
            f"no sound device support: {exc} (install libportaudio2 or use a tone/file source)"
        ) from exc
    module: ModuleType = sounddevice
    return module


class AudioSource(ABC):
    """Where a peer's voice comes from: 20 ms frames of 960 mono s16 samples at 48 kHz."""

    @abstractmethod
    def read(self) -> Pcm:
        """The next frame; never blocks, never runs out."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release what the source holds (a device stream)."""


class SilenceSource(AudioSource):
    """Digital silence: a peer that is present but says nothing."""

    def read(self) -> Pcm:
        return np.zeros(FRAME_SAMPLES, np.int16)


class ToneSource(AudioSource):
    """A steady sine tone: a bot's voice, easy to recognise by its pitch."""

    def __init__(self, hz: float) -> None:
        self.hz = hz
        self._phase = 0.0

    def read(self) -> Pcm:
        step = 2 * math.pi * self.hz / SAMPLE_RATE
        phases = self._phase + step * np.arange(FRAME_SAMPLES)
        # Carry the phase over so that frame boundaries do not click.
        self._phase = (self._phase + step * FRAME_SAMPLES) % (2 * math.pi)
        pcm: Pcm = (np.sin(phases) * (_TONE_AMPLITUDE * 32767)).astype(np.int16)
        return pcm


class FileSource(AudioSource):
    """A sound file, decoded once to 48 kHz mono s16 and looped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pcm = _decode_file(path)
        self._pos = 0

    def read(self) -> Pcm:
        total = len(self._pcm)
        idx = (self._pos + np.arange(FRAME_SAMPLES)) % total
        self._pos = (self._pos + FRAME_SAMPLES) % total
        frame: Pcm = self._pcm[idx]
        return frame


def _decode_file(path: str) -> Pcm:
    """All of a sound file's first audio stream as 48 kHz mono s16 samples."""
    if not os.path.isfile(path):
        raise ValueError(
            f"audio source {path!r} is neither tone, tone:HZ, silence, mic nor an existing file"
        )
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[Pcm] = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError(f"{path!r} has no audio stream")
            for frame in container.decode(audio=0):
                chunks.extend(_samples(f) for f in resampler.resample(frame))
            chunks.extend(_samples(f) for f in resampler.resample(None))
    except av.FFmpegError as exc:
        raise ValueError(f"cannot decode sound file {path!r}: {exc}") from exc
    if not chunks:
        raise ValueError(f"sound file {path!r} holds no audio")
    return np.concatenate(chunks)


def _samples(frame: av.AudioFrame) -> Pcm:
    """A resampled s16 mono frame's samples, flat."""
    return np.asarray(frame.to_ndarray(), np.int16).reshape(-1)


def _open_stream(kind: str, channels: int, dtype: str, callback: Any, device: str) -> Any:
    """A started sounddevice stream of 20 ms blocks; AudioUnavailable if it cannot be had."""
    sd = _sounddevice()
    try:
        stream = getattr(sd, kind)(
            samplerate=SAMPLE_RATE,
            channels=channels,
            dtype=dtype,
            blocksize=FRAME_SAMPLES,
            callback=callback,
        )
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        raise AudioUnavailable(f"cannot open the {device}: {exc}") from exc
    return stream


class MicSource(AudioSource):
    """The default input device, through a sounddevice stream.

    PortAudio's thread appends blocks; :meth:`read` takes the oldest, or silence
    when the device is late. The backlog is bounded so that latency cannot grow.
    """

    def __init__(self) -> None:
        self._blocks: collections.deque[Pcm] = collections.deque(maxlen=5)
        self._stream = _open_stream("InputStream", 1, "int16", self._callback, "microphone")

    def _callback(self, indata: Pcm, frames: int, time: Any, status: Any) -> None:
        # deque.append is atomic, so the PortAudio thread needs no lock.
        self._blocks.append(indata[:, 0].copy())

    def read(self) -> Pcm:
        try:
            return self._blocks.popleft()
        except IndexError:
            return np.zeros(FRAME_SAMPLES, np.int16)

    def close(self) -> None:
        self._stream.close()


def parse_source(spec: str, seed: int = 0) -> AudioSource:
    """The source a command-line spec names: ``tone``, ``tone:HZ``, ``silence``, ``mic`` or a path.

    A bare ``tone`` takes its pitch from ``seed``, so bots started with
    different seeds are told apart by ear. Raises ValueError for a bad spec or
    an unreadable file, AudioUnavailable for ``mic`` without a device.
    """
    if spec == "silence":
        return SilenceSource()
    if spec == "mic":
        return MicSource()
    if spec == "tone":
        return ToneSource(220.0 * 2 ** (_PENTATONIC[seed % len(_PENTATONIC)] / 12))
    if spec.startswith("tone:"):
        try:
            hz = float(spec.removeprefix("tone:"))
        except ValueError:
            hz = math.nan
        if not 0 < hz < SAMPLE_RATE / 2:
            raise ValueError(f"bad tone pitch in {spec!r}: want tone:HZ with 0 < HZ < 24000")
        return ToneSource(hz)
    return FileSource(spec)


class _PacedTrack(MediaStreamTrack):
    """An audio track that reads a source in 20 ms steps, paced to real time."""

    kind = "audio"

    def __init__(self, source: AudioSource) -> None:
        super().__init__()
        self.source = source
        self._pts = 0
        self._started: float | None = None

    async def _pace(self) -> None:
        """Wait until the next frame is due: the sender pulls as fast as ``recv`` returns."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._started is None:
            self._started = now
        due = self._started + self._pts / SAMPLE_RATE
        if now - due > _MAX_LAG:
            logger.debug("audio send clock %.0f ms behind; re-anchoring", (now - due) * 1000)
            self._started = now - self._pts / SAMPLE_RATE
        elif due > now:
            await asyncio.sleep(due - now)
        if self.readyState != "live":
            raise MediaStreamError

    def _frame(self) -> av.AudioFrame:
        """The source's next 20 ms, stamped with the current pts."""
        frame = av.AudioFrame.from_ndarray(
            self.source.read().reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame

    def stop(self) -> None:
        """End the track and release the source; relays reading it then finish."""
        if self.readyState == "live":
            self.source.close()
        super().stop()


class PcmAudioTrack(_PacedTrack):
    """A source as raw frames.

    Relayed to several connections, each ``RTCRtpSender`` encodes it anew:
    naive aiortc, kept for the load test's side-by-side ``--naive`` runs.
    """

    async def recv(self) -> av.AudioFrame:
        await self._pace()
        frame = self._frame()
        self._pts += FRAME_SAMPLES
        return frame


class EncodedAudioTrack(_PacedTrack):
    """A source encoded once to Opus, paced to real time, as ``av.Packet`` objects.

    aiortc's ``RTCRtpSender`` encodes only ``av.Frame`` objects; anything else
    it hands to ``encoder.pack()``, which reads the packet's bytes, ``pts`` and
    ``time_base``. So however many connections relay this track, it is encoded
    once. Do not add it to connections directly (see :class:`AudioOut`).

    Silence is not sent (DTX, through libopus itself: FFmpeg's wrapper has no
    such option). A frame libopus leaves unsent is skipped, and :meth:`recv`
    waits for the next real packet, whose pts has gone on in real time. The
    sender makes the RTP timestamp of the pts, so the timestamp jumps across
    the silence while the sequence numbers run on without a hole: that is how
    a receiver tells silence from loss. Without libopus (see ``opus.libopus``)
    PyAV encodes, and silence is sent like sound.
    """

    def __init__(self, source: AudioSource, bitrate: int = OPUS_BITRATE) -> None:
        super().__init__(source)
        lib = opus.libopus()
        self._opus = None if lib is None else opus.Encoder(lib, bitrate)
        self._av: Any = None
        if self._opus is None:
            self._av = av.CodecContext.create("libopus", "w")
            self._av.bit_rate = bitrate
            self._av.format = "s16"
            self._av.layout = "mono"
            self._av.sample_rate = SAMPLE_RATE
            self._av.time_base = TIME_BASE
            # opus.Encoder's settings, less DTX.
            self._av.options = {"application": "voip", "fec": "1", "packet_loss": "5"}
        self._pending: collections.deque[bytes] = collections.deque()

    async def recv(self) -> av.Packet[Any]:
        """The next packet to send, at its due time."""
        while True:
            await self._pace()
            # libopus takes well under a millisecond for 20 ms of mono, so encoding
            # here is cheaper than a hop to the thread pool.
            data = self._encode()
            pts = self._pts
            self._pts += FRAME_SAMPLES
            if len(data) > opus.DTX_MAX_BYTES:
                packet = av.Packet(data)
                # Ours, in real time, not the encoder's (PyAV's starts negative: pre-skip).
                packet.pts = pts
                packet.time_base = TIME_BASE
                return packet

    def _encode(self) -> bytes:
        """The source's next 20 ms as one Opus packet."""
        if self._opus is not None:
            pcm = np.ascontiguousarray(self.source.read(), np.int16)
            return self._opus.encode(pcm.ctypes.data, len(pcm))
        while not self._pending:
            self._pending.extend(bytes(p) for p in self._av.encode(self._frame()))
        return self._pending.popleft()

    def stop(self) -> None:
        """End the track, releasing the source and the encoder."""
        super().stop()
        if self._opus is not None:
            self._opus.close()


class AudioOut:
    """A peer's outgoing voice: one encoded track, relayed to each connection.

    Give each RTCPeerConnection its own :meth:`subscribe` track: a track added
    to two connections would split its packets between them, and a sender
    stopping a shared track would silence everyone. With ``encode_once``
    off, the relayed track is raw audio and every connection encodes it
    itself (naive aiortc, for comparison).
    """

    def __init__(
        self, source: AudioSource, bitrate: int = OPUS_BITRATE, *, encode_once: bool = True
    ) -> None:
        self.track = EncodedAudioTrack(source, bitrate) if encode_once else PcmAudioTrack(source)
        self._relay = MediaRelay()

    def subscribe(self) -> MediaStreamTrack:
        """A track for one connection, to pass to ``pc.addTrack``."""
        return self._relay.subscribe(self.track)

    def stop(self) -> None:
        """Stop sending to everyone; the relay's reader ends within one frame."""
        self.track.stop()


class MonoPcm(Protocol):
    """Anything the mixer can pull recent mono audio from."""

    def take(self, n: int) -> Mono:
        """Up to ``n`` of the oldest buffered samples, zero-padded to ``n``."""
        ...


class PcmBuffer:
    """The last few received frames, and their loudness, converted only when asked for.

    A peer receives 50 frames a second from everyone in the room; most are
    never mixed, so converting each on arrival would be work thrown away.

    With ``slack``, playing starts (and, after running dry, starts again) only
    once that many frames wait beyond the one being played. A frame that the
    receive path conceals for a lost packet comes only with the next packet,
    one frame late; one frame of slack plays it with no gap. Across a silence
    the sender did not send (DTX) it runs dry and starts again the same way,
    on whole frames, so the next talk spurt comes back without a click.
    """

    def __init__(self, max_frames: int = 5, slack: int = 0) -> None:
        self._chunks: collections.deque[_Chunk] = collections.deque(maxlen=max_frames)
        self._slack = slack
        self._playing = slack == 0

    def push(self, frame: av.AudioFrame) -> None:
        """Add a decoded s16 frame, mono or interleaved stereo."""
        self._chunks.append(_Chunk(frame))

    def take(self, n: int) -> Mono:
        out = np.zeros(n, np.float32)
        if self._playing and self._slack and not self._chunks:
            self._playing = False
        if not self._playing:
            if len(self._chunks) <= self._slack:
                return out
            self._playing = True
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks.popleft()
            mono = chunk.mono
            used = min(n - filled, len(mono))
            out[filled : filled + used] = mono[:used]
            if used < len(mono):
                self._chunks.appendleft(_Chunk(mono[used:]))
            filled += used
        return out

    @property
    def level_dbfs(self) -> float:
        """RMS of the recent frames in dBFS (a full-scale sine is about -3); -100 for silence."""
        if not self._chunks:
            return -100.0
        power = sum(chunk.energy for chunk in self._chunks) / len(self._chunks)
        return max(10 * math.log10(power), -100.0) if power > 0 else -100.0


class _Chunk:
    """One buffered frame, or what is left of it, converted to mono on first use."""

    __slots__ = ("_energy", "_frame", "_mono")

    def __init__(self, data: av.AudioFrame | Mono) -> None:
        self._frame = data if isinstance(data, av.AudioFrame) else None
        self._mono: Mono | None = None if isinstance(data, av.AudioFrame) else data
        self._energy: float | None = None

    @property
    def mono(self) -> Mono:
        if self._mono is None:
            assert self._frame is not None
            channels = len(self._frame.layout.channels)
            pcm = self._frame.to_ndarray().reshape(-1, channels).astype(np.float32)
            self._mono = pcm.mean(axis=1) / 32768.0
            self._frame = None
        return self._mono

    @property
    def energy(self) -> float:
        """Mean square of the samples (full scale 1.0)."""
        if self._energy is None:
            pcm: Mono
            if self._frame is not None:
                # Straight from the frame: a level needs no mono mix.
                n = self._frame.samples * len(self._frame.layout.channels)
                plane = memoryview(self._frame.planes[0])
                pcm = np.frombuffer(plane, np.int16, n).astype(np.float32) / 32768.0
            else:
                pcm = self.mono
            self._energy = float(np.dot(pcm, pcm)) / len(pcm) if len(pcm) else 0.0
        return self._energy


class AfterSilence:
    """The mark (``frame.opaque``) on the first frame after a silence the sender chose (DTX).

    The inline receive path (``.receiving``) sets it: the pts jump before that
    frame is silence, not loss. Give each frame a new one: PyAV files
    ``opaque`` values by ``id()``, so a mark shared by two frames would vanish
    from both once the first of them is freed.
    """

    __slots__ = ()


class AudioIn:
    """Reads one remote audio track for as long as it lives; the mixer's view of that peer.

    Every remote track needs one (or a MediaBlackhole): aiortc queues decoded
    frames without bound until someone reads them. Construct it inside the
    running loop, e.g. in the connection's ``track`` handler.

    A jump in the frames' pts is either silence the sender chose (DTX), which
    the inline receive path tells from loss by the sequence numbers and marks
    (:class:`AfterSilence`), or a gap: audio lost and not made up. aiortc's own
    receive path cannot tell them apart, so there every silence is a gap.
    """

    def __init__(self, track: MediaStreamTrack, name: str = "") -> None:
        self.track = track
        self.name = name
        self.buffer = PcmBuffer(slack=1)
        #: Frames received so far.
        self.frames = 0
        #: Times the pts jumped by more than one frame, and the samples thereby missing.
        self.gaps = 0
        self.missing_samples = 0
        #: Times the sender fell silent (DTX), and the samples it did not send.
        self.silences = 0
        self.silent_samples = 0
        self.last_pts: int | None = None
        #: Loop time of the first frame, to compare ``frames`` with the time elapsed.
        self.first_frame_at: float | None = None
        #: Set when the track has ended, for whatever reason.
        self.ended = asyncio.Event()
        #: Called with each frame as it arrives, for measurements (scripts/latency.py).
        self.on_frame: Callable[[av.AudioFrame], None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"AudioIn {name}")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if isinstance(frame, av.AudioFrame):
                    self._count(frame)
        except MediaStreamError:
            logger.debug("audio from %s ended", self.name)
        except Exception:
            # A broken frame must not take the peer down, only this stream.
            logger.exception("audio from %s failed", self.name)
        finally:
            self.ended.set()

    def _count(self, frame: av.AudioFrame) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = asyncio.get_running_loop().time()
        self.frames += 1
        if frame.pts is not None:
            jump = 0 if self.last_pts is None else frame.pts - self.last_pts - frame.samples
            if jump > 0 and isinstance(frame.opaque, AfterSilence):
                self.silences += 1
                self.silent_samples += jump
            elif jump > 0:
                self.gaps += 1
                self.missing_samples += jump
            self.last_pts = frame.pts
        self.buffer.push(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def take(self, n: int) -> Mono:
        """Up to ``n`` of the oldest unmixed samples, zero-padded (see :class:`MonoPcm`)."""
        return self.buffer.take(n)

    @property
    def level_dbfs(self) -> float:
        """How loud this peer is right now, for a speaking indicator."""
        return self.buffer.level_dbfs

    async def stop(self) -> None:
        """Stop reading; returns promptly even if the track never yields again."""
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=1.0)


@dataclasses.dataclass
class _Voice:
    """One source in the mix: where it stands, and the gains it was last mixed at."""

    source: MonoPcm
    #: None until the peer says where it stands: silent until then, not "right here".
    position: tuple[float, float] | None
    gains: tuple[float, float] = (0.0, 0.0)


class SpatialMixer:
    """Mixes each source's next 20 ms into one stereo frame, as heard from the listener.

    Gains follow the shared distance model and glide across each frame from
    the last frame's, so that walking never clicks; a new source fades in.
    """

    def __init__(
        self,
        listener: tuple[float, float] = (0.0, 0.0),
        model: DistanceModel = BAR.distance_model,
    ) -> None:
        self.listener = listener
        self.model = model
        self._voices: dict[str, _Voice] = {}

    def add(self, peer_id: str, source: MonoPcm, position: tuple[float, float] | None) -> None:
        """Start mixing a peer's audio (an :class:`AudioIn`) heard from ``position``.

        A source whose position is not known yet (None) stays silent until
        :meth:`move`: a voice from across the bar must not blare while its
        first position is on its way.
        """
        self._voices[peer_id] = _Voice(source, position)

    def move(self, peer_id: str, position: tuple[float, float]) -> None:
        """A peer moved; unknown peers are ignored since positions may outrun tracks."""
        voice = self._voices.get(peer_id)
        if voice is not None:
            voice.position = position

    def remove(self, peer_id: str) -> None:
        """Stop mixing a peer."""
        self._voices.pop(peer_id, None)

    def mix(self) -> Stereo:
        """The next 960 stereo samples, shape (960, 2), clipped to [-1, 1]."""
        out = np.zeros((FRAME_SAMPLES, 2), np.float32)
        for voice in self._voices.values():
            # Taken even when silent, so that nothing stale plays on coming near.
            pcm = voice.source.take(FRAME_SAMPLES)
            gains = (
                (0.0, 0.0)
                if voice.position is None
                else self.model.stereo_gains(self.listener, voice.position)
            )
            if gains == voice.gains:
                if gains != (0.0, 0.0):
                    out += pcm[:, None] * np.array(gains, np.float32)
                continue
            ramp = np.linspace(voice.gains, gains, FRAME_SAMPLES, dtype=np.float32)
            out += pcm[:, None] * ramp
            voice.gains = gains
        clipped: Stereo = np.clip(out, -1.0, 1.0)
        return clipped


class _MixClock(ABC):
    """Pulls one mix every 20 ms of real time and hands it to a sink."""

    def __init__(self, mixer: SpatialMixer, name: str) -> None:
        self.mixer = mixer
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    @abstractmethod
    def _write(self, mix: Stereo) -> None:
        """Take one 20 ms mix."""

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while True:
                self._write(self.mixer.mix())
                due += FRAME_SECONDS
                now = loop.time()
                if now - due > _MAX_LAG:
                    due = now  # after a stall, skip rather than catch up in a burst
                await asyncio.sleep(max(due - now, 0.0))
        except Exception:
            logger.exception("%s failed", self._task.get_name())

    async def _stop_clock(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=1.0)


class WavRecorder(_MixClock):
    """Writes the mix to a 16-bit 48 kHz stereo WAV file: what a bot hears, for checking."""

    def __init__(self, path: str | os.PathLike[str], mixer: SpatialMixer) -> None:
        self._wav = wave.open(os.fspath(path), "wb")  # noqa: SIM115 - closed by stop()
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        super().__init__(mixer, f"WavRecorder {path}")

    def _write(self, mix: Stereo) -> None:
        self._wav.writeframes((mix * 32767).astype("<i2").tobytes())

    async def stop(self) -> None:
        """Stop recording and finalize the file's header."""
        await self._stop_clock()
        self._wav.close()


class Speaker(_MixClock):
    """Plays the mix on the default output device.

    The clock runs in the event loop, where the mixer lives; PortAudio's thread
    only takes ready frames, with a small bounded backlog.
    """

    def __init__(self, mixer: SpatialMixer) -> None:
        self._frames: collections.deque[Stereo] = collections.deque(maxlen=5)
        self._stream = _open_stream("OutputStream", 2, "float32", self._callback, "speaker")
        super().__init__(mixer, "Speaker")

    def _write(self, mix: Stereo) -> None:
        self._frames.append(mix)

    def _callback(self, outdata: Stereo, frames: int, time: Any, status: Any) -> None:
        try:
            outdata[:] = self._frames.popleft()
        except IndexError:
            outdata.fill(0)  # an underrun: play silence rather than stale audio

    async def stop(self) -> None:
        """Stop playing and close the device."""
        await self._stop_clock()
        self._stream.close()
