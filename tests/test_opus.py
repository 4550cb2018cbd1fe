"""The ctypes layer over libopus: PyAV's own copy is found and used, and it decodes."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

import av
import numpy as np
import pytest

from chatsubo.peer import opus
from chatsubo.peer.audio import FRAME_SAMPLES, SAMPLE_RATE, TIME_BASE, ToneSource


def encode(
    pcm: np.typing.NDArray[np.int16], layout: str = "mono", *, fec: bool = True
) -> list[bytes]:
    """Opus packets of 20 ms mono samples, encoded by PyAV as our sender does, or as stereo."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate = 32000
    encoder.format = "s16"
    encoder.layout = layout
    encoder.sample_rate = SAMPLE_RATE
    encoder.time_base = TIME_BASE
    fec_options = {"fec": "1", "packet_loss": "5"} if fec else {}
    encoder.options = {"application": "voip", **fec_options}
    channels = 2 if layout == "stereo" else 1
    packets: list[bytes] = []
    for start in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        chunk = np.repeat(pcm[start : start + FRAME_SAMPLES], channels)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = TIME_BASE
        packets.extend(bytes(packet) for packet in encoder.encode(frame))
    return packets


def tone(frames: int) -> np.typing.NDArray[np.int16]:
    source = ToneSource(440.0)
    return np.concatenate([source.read() for _ in range(frames)])


def decode(decoder: opus.Decoder, packet: bytes | None, samples: int, fec: bool = False) -> bytes:
    out = ctypes.create_string_buffer(samples * 2 * decoder.channels)
    assert decoder.decode_into(packet, ctypes.addressof(out), samples, fec) == samples
    return out.raw


def test_the_libopus_loaded_is_the_one_bundled_with_pyav() -> None:
    # A reach into PyAV's wheel layout: this fails first when a PyAV upgrade moves it.
    bundled = opus.bundled_libopus()
    assert bundled is not None, f"no libopus in PyAV {av.__version__}'s wheel"
    lib = opus.libopus()
    assert lib is not None
    assert lib.path == str(bundled)
    assert lib.version.startswith("libopus 1.")
    assert lib.knows_lbrr, f"{lib.version} cannot tell which packets carry FEC"
    # PyAV's own decoder has mapped the very same file: one libopus in the process.
    list(av.CodecContext.create("libopus", "r").decode(av.Packet(encode(tone(1))[0])))
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "libopus" in line}
    assert {os.path.realpath(m) for m in mapped} == {os.path.realpath(bundled)}


def test_a_mono_decoder_decodes_stereo_too_and_conceals() -> None:
    lib = opus.libopus()
    assert lib is not None
    for packets in (encode(tone(10)), encode(tone(10), "stereo")):
        mono = opus.Decoder(lib)
        for packet in packets:
            assert lib.samples(packet) == FRAME_SAMPLES
            pcm = np.frombuffer(decode(mono, packet, FRAME_SAMPLES), np.int16)
        # A 0.3 full-scale tone, whether it came as one channel or two.
        assert 0.2 < np.abs(pcm).max() / 32768 < 0.4
        concealed = np.frombuffer(decode(mono, None, FRAME_SAMPLES), np.int16)
        assert np.abs(concealed).max() > 1000, "PLC carries the tone on"
        mono.close()


def test_fec_is_found_and_decoded() -> None:
    lib = opus.libopus()
    assert lib is not None
    packets = encode(tone(10))
    # libopus adds FEC once it has a frame to add it for.
    assert not lib.has_fec(packets[0])
    assert lib.has_fec(packets[5])
    decoder = opus.Decoder(lib)
    decode(decoder, packets[3], FRAME_SAMPLES)
    recovered = np.frombuffer(decode(decoder, packets[5], FRAME_SAMPLES, fec=True), np.int16)
    assert np.abs(recovered).max() > 1000
    decoder.close()


def test_bad_packets_and_a_closed_decoder_raise() -> None:
    lib = opus.libopus()
    assert lib is not None
    with pytest.raises(opus.OpusError):
        lib.samples(b"\xff\xff\xff")
    with pytest.raises(opus.OpusError):
        lib.samples(b"")
    decoder = opus.Decoder(lib)
    decoder.close()
    decoder.close()
    with pytest.raises(opus.OpusError, match="closed"):
        decode(decoder, None, FRAME_SAMPLES)


def test_a_forgotten_decoder_is_freed_when_collected() -> None:
    lib = opus.libopus()
    assert lib is not None
    decoder = opus.Decoder(lib)
    free = decoder._free
    del decoder
    gc.collect()
    assert not free.alive


def test_what_is_not_libopus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot open"):
        opus.Libopus.load(str(tmp_path / "libopus.so.0"))
    libc = ctypes.util.find_library("c")
    assert libc is not None
    with pytest.raises(OSError, match="not libopus"):
        opus.Libopus.load(libc)


def test_an_older_system_libopus_works_without_knowing_fec() -> None:
    system = ctypes.util.find_library("opus")
    if system is None:
        pytest.skip("no libopus on this system")
    lib = opus.Libopus.load(system)
    packets = encode(tone(10))
    if not lib.knows_lbrr:
        # Before 1.5: it cannot tell, so it says no and the receiver conceals.
        assert not lib.has_fec(packets[5])
    pcm = np.frombuffer(decode(opus.Decoder(lib), packets[5], FRAME_SAMPLES), np.int16)
    assert np.abs(pcm).max() > 1000


def test_the_encoder_matches_pyav_s_and_stops_coding_silence() -> None:
    lib = opus.libopus()
    assert lib is not None
    encoder = opus.Encoder(lib, 32000)
    pcm = tone(50)
    frames = [pcm[i : i + FRAME_SAMPLES] for i in range(0, len(pcm), FRAME_SAMPLES)]
    # The settings our sender had from PyAV, so a voice sounds as it did.
    assert [encoder.encode(f.ctypes.data, FRAME_SAMPLES) for f in frames] == encode(pcm)
    silence = np.zeros(FRAME_SAMPLES, np.int16)
    sizes = [len(encoder.encode(silence.ctypes.data, FRAME_SAMPLES)) for _ in range(40)]
    # Some 200 ms of it are coded, then only a comfort-noise refresh every 400 ms.
    assert all(n > opus.DTX_MAX_BYTES for n in sizes[:8])
    assert sum(n > opus.DTX_MAX_BYTES for n in sizes[20:]) <= 1
    encoder.close()
    encoder.close()
    with pytest.raises(opus.OpusError, match="closed"):
        encoder.encode(silence.ctypes.data, FRAME_SAMPLES)
