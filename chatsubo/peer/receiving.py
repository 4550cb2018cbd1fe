"""A faster audio receive path for aiortc receivers: no wait, no thread hop, no gaps.

aiortc gives every audio receiver ``JitterBuffer(capacity=16, prefetch=4)``
and a decoder thread of its own. The buffer holds four frames before it
releases the first (80 ms on every voice), and as it only learns that a frame
is complete from the next packet's timestamp, it can never release a packet
on arrival; after a loss it stays behind for good (aiortc issue 543). The
thread costs two cross-thread handoffs per frame, which in a mesh of ten
(90 streams, 4,500 frames a second) take more CPU than decoding itself.

An Opus RTP packet is one whole frame, so :class:`InlineAudioPath` takes the
jitter buffer's place and, for each packet as it arrives, decodes it right
there in the event loop and hands the frame to the receiver's track. It
never goes back: a packet older than one already decoded is dropped. On a
LAN, where packets come in order, this adds no delay at all. Smoothing
playout against jitter is left to the sink, which buffers a few frames anyway
(``PcmBuffer``). The receiver's own decoder thread is left idle and ends with
the receiver.

Silence a sender chose not to send (Opus DTX) is no loss: the sequence
numbers run on while the timestamp jumps. The first frame after it is marked
(:class:`~.audio.AfterSilence`) for :class:`~.audio.AudioIn`, and nothing is made up.

A lost packet leaves no hole: when the next one arrives, the frames missing
before it are made up first, stamped with the times they stand for. The one
just before it is rebuilt from that packet's in-band FEC where the sender
added some (browsers do, and so do our own senders), the others are
concealed by Opus's PLC. That needs libopus itself (:mod:`.opus`); without
it, Opus is decoded by PyAV and a loss stays a gap. A gap longer than
``_MAX_CONCEALED`` samples is not filled: PLC has faded to silence by then.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import av
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from . import opus
from .audio import FRAME_SAMPLES, SAMPLE_RATE, TIME_BASE, AfterSilence

logger = logging.getLogger(__name__)

#: Sequence numbers this far from the expected one mean the stream restarted.
_RESTART_DISTANCE = 1000
#: The longest gap that is filled in, in samples (200 ms).
_MAX_CONCEALED = SAMPLE_RATE // 5


def _ahead(seq: int, of: int) -> int:
    """How far ``seq`` is after ``of``, modulo 2**16; negative when it is before."""
    delta = (seq - of) & 0xFFFF
    return delta - 0x10000 if delta >= 0x8000 else delta


@dataclass(frozen=True)
class ReceiveStats:
    """What one stream's :class:`InlineAudioPath` has counted so far (see there)."""

    received: int
    lost: int
    concealed: int
    recovered: int
    late: int


class _OpusMono(Decoder):
    """Opus decoded to mono by PyAV: what a voice is, at half the work of aiortc's stereo."""

    def __init__(self) -> None:
        self.codec: Any = av.CodecContext.create("libopus", "r")
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = SAMPLE_RATE

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = TIME_BASE
        return list(self.codec.decode(packet))


class _ConcealingOpusMono(Decoder):
    """Opus decoded to mono by libopus itself, which can also make up lost frames."""

    def __init__(self, lib: opus.Libopus) -> None:
        self.lib = lib
        self._decoder = opus.Decoder(lib, channels=1)
        #: The length of the last frame decoded: the best guess for a lost one's.
        self.last_samples = FRAME_SAMPLES

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        samples = self.lib.samples(encoded_frame.data)
        frame = self._decode(encoded_frame.data, encoded_frame.timestamp, samples, fec=False)
        self.last_samples = samples
        return [frame]

    def conceal(self, pts: int, samples: int) -> av.AudioFrame:
        """A lost frame of ``samples`` at ``pts``, extrapolated by PLC."""
        return self._decode(None, pts, samples, fec=False)

    def recover(self, data: bytes, pts: int, samples: int) -> av.AudioFrame:
        """The lost frame before packet ``data``, rebuilt from the FEC data it carries."""
        return self._decode(data, pts, samples, fec=True)

    def _decode(self, data: bytes | None, pts: int, samples: int, *, fec: bool) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        # Straight into the frame's own memory: no copy per frame.
        self._decoder.decode_into(data, frame.planes[0].buffer_ptr, samples, fec)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = TIME_BASE
        return frame


class InlineAudioPath(JitterBuffer):
    """Stands in for an audio receiver's jitter buffer: decodes each packet on arrival.

    Its counters, in frames (one Opus packet is one frame):

    - ``received``: packets decoded;
    - ``lost``: frames missing from the sequence, counted when the packet
      after them arrives (a restarted stream loses none); each of them is
      then ``concealed`` (made up by PLC), ``recovered`` (rebuilt from the
      next packet's FEC), or neither when the gap is too long to fill or
      libopus is missing, so ``lost >= concealed + recovered``;
    - ``late``: packets dropped because a newer one had already been
      decoded (a lost one that turns up after all is counted in both);
    - ``undecodable``: packets that failed to decode.
    """

    def __init__(
        self, codecs: dict[int, RTCRtpCodecParameters], frames: asyncio.Queue[Any]
    ) -> None:
        super().__init__(capacity=16)
        self._codecs = codecs
        self._frames = frames
        self._decoders: dict[int, Decoder] = {}
        self._next: int | None = None
        self._first_timestamp: int | None = None
        #: Where the last frame handed on ends (its pts plus its length).
        self._end: int | None = None
        self.received = 0
        self.lost = 0
        self.concealed = 0
        self.recovered = 0
        self.late = 0
        self.undecodable = 0

    def stats(self) -> ReceiveStats:
        """The counters as they stand."""
        return ReceiveStats(self.received, self.lost, self.concealed, self.recovered, self.late)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Decode ``packet`` now; nothing is left for aiortc's decoder thread."""
        seq = packet.sequence_number
        ahead = 0 if self._next is None else _ahead(seq, self._next)
        if -_RESTART_DISTANCE <= ahead < 0:
            self.late += 1
            return False, None
        self._next = (seq + 1) & 0xFFFF
        missing = ahead if 0 < ahead < _RESTART_DISTANCE else 0
        self.lost += missing
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            return False, None
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            decoder = self._decoders[packet.payload_type] = _decoder_for(codec)
        if self._first_timestamp is None:
            self._first_timestamp = packet.timestamp
        # Frames count from zero, as aiortc's own receive path stamps them.
        pts = (packet.timestamp - self._first_timestamp) & 0xFFFFFFFF
        # The very next packet, yet later than the last frame ended: DTX silence.
        silent = (
            ahead == 0 and self._end is not None and 0 < (pts - self._end) & 0xFFFFFFFF < 0x80000000
        )
        data: bytes = getattr(packet, "_data", packet.payload)
        try:
            if missing and isinstance(decoder, _ConcealingOpusMono):
                self._fill_in(decoder, missing, data, pts)
            # aiortc's audio decoders make av.AudioFrames, though typed as any av.Frame.
            decoded: list[Any] = decoder.decode(JitterFrame(data=data, timestamp=pts))
        except (av.FFmpegError, opus.OpusError) as exc:
            self.undecodable += 1
            logger.debug("dropping an undecodable audio packet: %s", exc)
            return False, None
        self.received += 1
        if silent and decoded:
            decoded[0].opaque = AfterSilence()
        for frame in decoded:
            self._hand_on(frame)
        return False, None

    def _fill_in(self, decoder: _ConcealingOpusMono, missing: int, data: bytes, pts: int) -> None:
        """Make up the ``missing`` frames before packet ``data`` at ``pts``, where they fit."""
        start = self._end
        if start is None:
            return
        samples = decoder.last_samples
        room = (pts - start) & 0xFFFFFFFF
        if missing * samples > _MAX_CONCEALED or room >= 0x80000000:
            return
        # Never more than fits before the packet, so that no two frames overlap.
        count = min(missing, room // samples)
        for i in range(count):
            at = (start + i * samples) & 0xFFFFFFFF
            # The packet's FEC is for the frame right before it, of its own length.
            if (
                i == count - 1
                and (at + samples) & 0xFFFFFFFF == pts
                and decoder.lib.has_fec(data)
                and decoder.lib.samples(data) == samples
            ):
                self._hand_on(decoder.recover(data, at, samples))
                self.recovered += 1
            else:
                self._hand_on(decoder.conceal(at, samples))
                self.concealed += 1

    def _hand_on(self, frame: av.AudioFrame) -> None:
        if frame.pts is not None:
            self._end = (frame.pts + frame.samples) & 0xFFFFFFFF
        self._frames.put_nowait(frame)


def _decoder_for(codec: RTCRtpCodecParameters) -> Decoder:
    """Opus to mono, by libopus where it can be had; other codecs as aiortc decodes them."""
    if codec.mimeType.lower() != "audio/opus":
        return get_decoder(codec)
    lib = opus.libopus()
    return _OpusMono() if lib is None else _ConcealingOpusMono(lib)


def use_inline_audio_path(receiver: Any) -> InlineAudioPath | None:
    """Give an aiortc audio receiver an :class:`InlineAudioPath`; that path, or None.

    aiortc has no option for this, so it replaces the receiver's private
    jitter buffer, and reads its private codec table and its track's queue.
    Before any packet arrives (in the connection's ``track`` event) that is
    safe. Should a future aiortc rename any of them, the receiver keeps its
    own path, a warning says so, and this returns None.
    """
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None)
    frames = getattr(getattr(receiver, "track", None), "_queue", None)
    if not (
        isinstance(buffer, JitterBuffer)
        and isinstance(codecs, dict)
        and isinstance(frames, asyncio.Queue)
    ):
        logger.warning("this aiortc's receiver is not as expected; keeping its own audio path")
        return None
    path = InlineAudioPath(codecs, frames)
    receiver._RTCRtpReceiver__jitter_buffer = path
    return path
