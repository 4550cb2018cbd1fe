"""A faster audio receive path for aiortc receivers: no wait, no thread hop.

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
never goes back: a packet older than one already decoded is dropped, and the
decoder carries on across the gap. On a LAN, where packets come in order,
this adds no delay at all; a lost or reordered packet costs one frame, never
a lasting delay. Smoothing playout against jitter is left to the sink, which
buffers a few frames anyway (``PcmBuffer``). The receiver's own decoder
thread is left idle and ends with the receiver.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import av
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .audio import SAMPLE_RATE, TIME_BASE

logger = logging.getLogger(__name__)

#: Sequence numbers this far behind the expected one mean the stream restarted.
_RESTART_DISTANCE = 1000


def _ahead(seq: int, of: int) -> int:
    """How far ``seq`` is after ``of``, modulo 2**16; negative when it is before."""
    delta = (seq - of) & 0xFFFF
    return delta - 0x10000 if delta >= 0x8000 else delta


class _OpusMono(Decoder):
    """Opus decoded to mono: what a voice is, at half the work of aiortc's stereo."""

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


class InlineAudioPath(JitterBuffer):
    """Stands in for an audio receiver's jitter buffer: decodes each packet on arrival."""

    def __init__(
        self, codecs: dict[int, RTCRtpCodecParameters], frames: asyncio.Queue[Any]
    ) -> None:
        super().__init__(capacity=16)
        self._codecs = codecs
        self._frames = frames
        self._decoders: dict[int, Decoder] = {}
        self._next: int | None = None
        self._first_timestamp: int | None = None
        #: Packets dropped because a newer one had already been decoded, and ones that failed.
        self.late = 0
        self.undecodable = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Decode ``packet`` now; nothing is left for aiortc's decoder thread."""
        seq = packet.sequence_number
        if self._next is not None and -_RESTART_DISTANCE <= _ahead(seq, self._next) < 0:
            self.late += 1
            return False, None
        self._next = (seq + 1) & 0xFFFF
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            return False, None
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            opus = codec.mimeType.lower() == "audio/opus"
            decoder = self._decoders[packet.payload_type] = (
                _OpusMono() if opus else get_decoder(codec)
            )
        if self._first_timestamp is None:
            self._first_timestamp = packet.timestamp
        # Frames count from zero, as aiortc's own receive path stamps them.
        pts = (packet.timestamp - self._first_timestamp) & 0xFFFFFFFF
        data: bytes = getattr(packet, "_data", packet.payload)
        try:
            decoded = decoder.decode(JitterFrame(data=data, timestamp=pts))
        except av.FFmpegError as exc:
            self.undecodable += 1
            logger.debug("dropping an undecodable audio packet: %s", exc)
            return False, None
        for frame in decoded:
            self._frames.put_nowait(frame)
        return False, None


def use_inline_audio_path(receiver: Any) -> bool:
    """Give an aiortc audio receiver an :class:`InlineAudioPath`; whether it took.

    aiortc has no option for this, so it replaces the receiver's private
    jitter buffer, and reads its private codec table and its track's queue.
    Before any packet arrives (in the connection's ``track`` event) that is
    safe. Should a future aiortc rename any of them, the receiver keeps its
    own path and a warning says so.
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
        return False
    receiver._RTCRtpReceiver__jitter_buffer = InlineAudioPath(codecs, frames)
    return True
