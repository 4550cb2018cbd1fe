"""Opus straight from libopus, for what PyAV's wrapper cannot do: FEC, PLC and DTX.

A receiver that misses a packet can ask libopus for that frame two ways: from
the in-band FEC (LBRR) data that the *next* packet may carry, or by packet
loss concealment, extrapolating from what it decoded last. A sender can ask
it not to code silence at all (DTX). FFmpeg's libopus wrapper offers none of
these, so this is a small ctypes layer over the few functions needed.

It loads the libopus that PyAV's wheel bundles, the very copy PyAV encodes
with, so nothing needs installing; failing that, the system's. Where to find
PyAV's copy is that wheel's private layout (auditwheel's ``av.libs`` on
Linux, delocate's ``av/.dylibs`` on macOS), so :func:`libopus` checks what it
loads and returns None, with one warning, when it finds nothing usable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

#: The rate Opus codes at inside, whatever it is given: everything here runs at it.
SAMPLE_RATE = 48000
#: A packet this small stands for a frame that DTX leaves unsent (WebRTC's rule too).
DTX_MAX_BYTES = 2
#: The most one 20 ms frame can take (RFC 6716, 3.2.1).
_MAX_PACKET_BYTES = 1275
#: From opus_defines.h.
_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_DTX = 4016
_SET_VBR_CONSTRAINT = 4020

#: Where PyAV's wheels keep their bundled libraries, relative to site-packages.
_BUNDLED = ("av.libs/libopus*.so*", "av/.dylibs/libopus*.dylib")


class OpusError(Exception):
    """libopus refused: a corrupt packet, or a decoder it could not make."""


def bundled_libopus() -> Path | None:
    """The libopus in PyAV's wheel, or None where this PyAV was built otherwise."""
    site = Path(av.__file__).resolve().parent.parent
    for pattern in _BUNDLED:
        for path in sorted(site.glob(pattern)):
            return path
    return None


@dataclass(frozen=True)
class Libopus:
    """A loaded libopus, its functions typed for ctypes."""

    path: str
    version: str
    #: libopus >= 1.5 can tell whether a packet carries FEC; older ones cannot.
    knows_lbrr: bool
    cdll: Any

    @classmethod
    def load(cls, path: str) -> Libopus:
        """Load libopus from ``path``; OSError if that is not a usable libopus."""
        try:
            lib = ctypes.CDLL(path)
            lib.opus_get_version_string.restype = ctypes.c_char_p
            lib.opus_get_version_string.argtypes = []
            lib.opus_strerror.restype = ctypes.c_char_p
            lib.opus_strerror.argtypes = [ctypes.c_int]
            lib.opus_decoder_create.restype = ctypes.c_void_p
            lib.opus_decoder_create.argtypes = [
                ctypes.c_int32,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_int),
            ]
            lib.opus_decoder_destroy.restype = None
            lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
            # PCM goes in as an address: straight into an av.AudioFrame's plane.
            lib.opus_decode.restype = ctypes.c_int
            lib.opus_decode.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int32,
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_int,
            ]
            lib.opus_packet_get_nb_samples.restype = ctypes.c_int
            lib.opus_packet_get_nb_samples.argtypes = [
                ctypes.c_char_p,
                ctypes.c_int32,
                ctypes.c_int32,
            ]
            lib.opus_encoder_create.restype = ctypes.c_void_p
            lib.opus_encoder_create.argtypes = [
                ctypes.c_int32,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_int),
            ]
            lib.opus_encoder_destroy.restype = None
            lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
            # Variadic: only the fixed arguments are typed, as ctypes asks (Apple's arm64
            # passes the rest differently), and each value goes as a c_int32.
            lib.opus_encoder_ctl.restype = ctypes.c_int
            lib.opus_encoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.opus_encode.restype = ctypes.c_int32
            lib.opus_encode.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_void_p,
                ctypes.c_int32,
            ]
            knows_lbrr = hasattr(lib, "opus_packet_has_lbrr")
            if knows_lbrr:
                lib.opus_packet_has_lbrr.restype = ctypes.c_int
                lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
            version = lib.opus_get_version_string().decode()
        except AttributeError as exc:
            raise OSError(f"{path} is not libopus: {exc}") from exc
        return cls(path, version, knows_lbrr, lib)

    def strerror(self, code: int) -> str:
        """libopus's words for an error code."""
        message: bytes = self.cdll.opus_strerror(code)
        return message.decode()

    def samples(self, packet: bytes) -> int:
        """How many samples (at 48 kHz) ``packet`` decodes to; OpusError if it is corrupt."""
        n: int = self.cdll.opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE)
        if n < 0:
            raise OpusError(self.strerror(n))
        return n

    def has_fec(self, packet: bytes) -> bool:
        """Whether ``packet`` carries FEC for the frame before it (False if libopus cannot tell)."""
        return self.knows_lbrr and self.cdll.opus_packet_has_lbrr(packet, len(packet)) == 1


class Decoder:
    """One libopus decoder at 48 kHz, mono or stereo, giving interleaved s16.

    A mono decoder takes stereo streams too (browsers send them): libopus
    mixes them down. Call :meth:`close` when done; should that be
    forgotten, the decoder is freed when this object is collected.
    """

    def __init__(self, lib: Libopus, channels: int = 1) -> None:
        self.lib = lib
        self.channels = channels
        error = ctypes.c_int()
        state = lib.cdll.opus_decoder_create(SAMPLE_RATE, channels, ctypes.byref(error))
        if not state:
            raise OpusError(f"cannot make an Opus decoder: {lib.strerror(error.value)}")
        self._state: int | None = state
        self._decode = lib.cdll.opus_decode
        # Holds only the function and the state, never self, so it cannot keep self alive.
        self._free = weakref.finalize(self, lib.cdll.opus_decoder_destroy, state)

    def decode_into(self, packet: bytes | None, address: int, samples: int, fec: bool) -> int:
        """Decode into ``samples`` samples per channel of s16 at ``address``; how many came.

        ``packet`` None conceals a lost frame of ``samples`` (PLC); with
        ``fec``, the frame before ``packet`` is rebuilt from its FEC data, or
        concealed where it has none, and ``samples`` must be that frame's
        length. The caller owns the memory and guarantees its size.
        """
        if self._state is None:
            raise OpusError("the decoder is closed")
        length = 0 if packet is None else len(packet)
        n: int = self._decode(self._state, packet, length, address, samples, int(fec))
        if n < 0:
            raise OpusError(self.lib.strerror(n))
        return n

    def close(self) -> None:
        """Free the decoder now; it cannot be used after."""
        self._state = None
        self._free()


class Encoder:
    """One libopus encoder of 48 kHz mono s16, set as our senders want, with DTX.

    For voice over IP, at ``bitrate`` with unconstrained VBR, and with in-band
    FEC sized for 5% loss: PyAV's settings before, packet for packet. With
    DTX, libopus codes no silence: it gives a packet of at most
    ``DTX_MAX_BYTES`` for a frame not worth sending, and every 400 ms of
    silence one real packet that refreshes the receiver's comfort noise.
    Call :meth:`close` when done, or the encoder is freed when collected.
    """

    def __init__(self, lib: Libopus, bitrate: int) -> None:
        self.lib = lib
        error = ctypes.c_int()
        state = lib.cdll.opus_encoder_create(SAMPLE_RATE, 1, _APPLICATION_VOIP, ctypes.byref(error))
        if not state:
            raise OpusError(f"cannot make an Opus encoder: {lib.strerror(error.value)}")
        self._state: int | None = state
        self._free = weakref.finalize(self, lib.cdll.opus_encoder_destroy, state)
        # FEC goes to speech only, within the bitrate (about 3% more for a voice).
        # Sized for 5% loss: at 10% libopus also moves a steady tone from CELT to
        # SILK, which conceals a lost tone frame far worse.
        settings = {
            _SET_BITRATE: bitrate,
            _SET_VBR_CONSTRAINT: 0,
            _SET_INBAND_FEC: 1,
            _SET_PACKET_LOSS_PERC: 5,
            _SET_DTX: 1,
        }
        for request, value in settings.items():
            code = lib.cdll.opus_encoder_ctl(state, request, ctypes.c_int32(value))
            if code < 0:
                self.close()
                raise OpusError(f"libopus refused setting {request}: {lib.strerror(code)}")
        self._out = ctypes.create_string_buffer(_MAX_PACKET_BYTES)

    def encode(self, address: int, samples: int) -> bytes:
        """The packet for ``samples`` mono s16 samples at ``address`` (a valid Opus frame length).

        At most ``DTX_MAX_BYTES`` long when DTX leaves the frame unsent.
        """
        if self._state is None:
            raise OpusError("the encoder is closed")
        n: int = self.lib.cdll.opus_encode(
            self._state, address, samples, self._out, _MAX_PACKET_BYTES
        )
        if n < 0:
            raise OpusError(self.lib.strerror(n))
        return ctypes.string_at(self._out, n)

    def close(self) -> None:
        """Free the encoder now; it cannot be used after."""
        self._state = None
        self._free()


@functools.cache
def libopus() -> Libopus | None:
    """PyAV's bundled libopus, else the system's; None, with one warning, if neither loads."""
    bundled = bundled_libopus()
    system = ctypes.util.find_library("opus")
    for candidate in (str(bundled) if bundled else None, system):
        if candidate is None:
            continue
        try:
            lib = Libopus.load(candidate)
        except OSError as exc:
            logger.debug("cannot use libopus at %s: %s", candidate, exc)
            continue
        logger.debug("using %s from %s", lib.version, lib.path)
        return lib
    logger.warning(
        "no usable libopus (none bundled with PyAV, none on the system): "
        "lost audio packets will not be concealed, and silence is sent like sound"
    )
    return None
