"""Mouth-to-ear latency between two Python peers, by chirps and cross-correlation.

It measures twice, side by side: with the peer's inline audio receive path
(chatsubo/peer/receiving.py) and with aiortc's own (which waits for four frames).
The speaker's voice is silence with a short chirp every quarter second. The
source notes the host-clock moment each chirp's frame is handed to the sender
(the "mouth"). The listener notes the moment each decoded frame arrives (the
"ear"), finds every chirp in what it heard by cross-correlation, and so times
each one to the sample. Both peers run in this process, on one clock, through a
real server and real UDP on loopback.

    .venv/bin/python scripts/latency.py --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from benchkit import Progress, percentile, run_loop, running, start_chatsubo

from chatsubo.commandline import positive_float
from chatsubo.peer.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioIn,
    AudioOut,
    AudioSource,
    Mono,
    Pcm,
)
from chatsubo.peer.mesh import MeshPeer, PeerOptions
from chatsubo.peer.signaling import SignalingOptions

#: A chirp every this many samples (250 ms), starting 10 ms into its frame.
CHIRP_EVERY = 12_000
CHIRP_OFFSET = 480
CHIRP_SAMPLES = 480
#: Correlation peaks below this share of the template's own energy are not chirps.
MATCH_THRESHOLD = 0.5
#: Chirps are looked for this long after they were sent.
SEARCH_WINDOW = 0.5


def chirp() -> Mono:
    """10 ms sweeping from 500 Hz to 4 kHz, with faded ends."""
    t = np.arange(CHIRP_SAMPLES) / SAMPLE_RATE
    duration = CHIRP_SAMPLES / SAMPLE_RATE
    sweep = np.sin(2 * np.pi * (500 * t + (4000 - 500) / (2 * duration) * t**2))
    wave: Mono = (sweep * np.hanning(CHIRP_SAMPLES)).astype(np.float32)
    return wave


class ChirpSource(AudioSource):
    """Silence with a chirp every ``CHIRP_EVERY`` samples; remembers when each left."""

    def __init__(self) -> None:
        self.template = chirp()
        self._samples = 0
        #: Host time of each chirp's first sample, as its frame was handed over.
        self.sent: list[float] = []

    def read(self) -> Pcm:
        now = time.time()
        frame = np.zeros(FRAME_SAMPLES, np.float32)
        start = self._samples
        for onset in range(start - start % CHIRP_EVERY, start + FRAME_SAMPLES, CHIRP_EVERY):
            first = onset + CHIRP_OFFSET
            if start <= first < start + FRAME_SAMPLES:
                i = first - start
                n = min(CHIRP_SAMPLES, FRAME_SAMPLES - i)
                frame[i : i + n] = self.template[:n] * 0.5
                self.sent.append(now + i / SAMPLE_RATE)
        self._samples += FRAME_SAMPLES
        pcm: Pcm = (frame * 32767).astype(np.int16)
        return pcm


class Ear:
    """Everything heard, with the host time each frame arrived."""

    def __init__(self) -> None:
        self.chunks: list[Mono] = []
        self.arrivals: list[float] = []

    def hear(self, frame: av.AudioFrame) -> None:
        now = time.time()
        channels = len(frame.layout.channels)
        pcm = frame.to_ndarray().reshape(-1, channels).astype(np.float32)
        self.chunks.append(pcm.mean(axis=1) / 32768.0)
        self.arrivals.append(now)

    def latencies(
        self, sent: list[float], template: Mono, within: float = SEARCH_WINDOW
    ) -> list[float]:
        """Seconds from mouth to ear for each chirp found ``within`` seconds of leaving.

        Under loss, keep ``within`` shorter than the chirps' spacing: a lost
        chirp would otherwise be timed by the next one.
        """
        if not self.chunks:
            return []
        audio = np.concatenate(self.chunks)
        # When each received sample is heard: its frame's arrival, plus its place in it.
        sample_times = np.concatenate(
            [
                arrival + np.arange(len(chunk)) / SAMPLE_RATE
                for arrival, chunk in zip(self.arrivals, self.chunks, strict=True)
            ]
        )
        energy = float(np.dot(template, template)) * 0.5
        found = []
        for mouth in sent:
            window = np.flatnonzero((sample_times >= mouth) & (sample_times < mouth + within))
            if len(window) < len(template):
                continue
            segment = audio[window[0] : window[-1] + 1]
            scores = np.correlate(segment, template, mode="valid")
            # The first chirp to arrive is this one; a later peak is the next chirp.
            above = np.flatnonzero(scores >= MATCH_THRESHOLD * energy)
            if len(above) == 0:
                continue
            first = int(above[0])
            best = first + int(np.argmax(scores[first : first + len(template)]))
            found.append(float(sample_times[window[0] + best]) - mouth)
        return found


async def measure(
    url: str, seconds: float, progress: Progress, *, low_latency: bool
) -> dict[str, Any]:
    """Chirp for ``seconds`` from one peer to another; the latencies found."""
    label = "inline path" if low_latency else "aiortc's own"
    source = ChirpSource()
    voice = AudioOut(source)
    ear = Ear()
    speaker = MeshPeer("latency", "speaker", SignalingOptions(urls=[url]), audio=voice)
    listener = MeshPeer(
        "latency",
        "listener",
        SignalingOptions(urls=[url]),
        PeerOptions(inline_audio=low_latency),
    )
    heard = asyncio.Event()

    def on_audio(peer_id: str, audio_in: AudioIn) -> None:
        audio_in.on_frame = ear.hear
        heard.set()

    listener.on("audio", on_audio)
    try:
        await listener.start()
        await speaker.start()
        progress.show(f"{label}: connecting")
        await asyncio.wait_for(heard.wait(), 20)
        # Chirps sent before the link carried audio would only count as lost.
        first = len(source.sent)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            progress.show(
                f"{label}: listening", f"{left:.0f} s left, {len(source.sent) - first} chirps"
            )
            await asyncio.sleep(min(left, 0.5))
        # Let the last chirps arrive.
        await asyncio.sleep(SEARCH_WINDOW)
    finally:
        await speaker.close()
        await listener.close()
        voice.stop()
    sent = source.sent[first:]
    sent = [t for t in sent if t < time.time() - SEARCH_WINDOW]
    found = sorted(ear.latencies(sent, source.template))
    progress.done(f"{label}: {len(found)} of {len(sent)} chirps found")
    return chirp_result("path", label, sent, found)


def chirp_result(key: str, label: str, sent: list[float], found: list[float]) -> dict[str, Any]:
    """What a run found: ``found`` are the latencies, sorted, of the ``sent`` chirps heard."""
    return {
        key: label,
        "chirps_sent": len(sent),
        "chirps_found": len(found),
        "p50_ms": 1000 * percentile(found, 0.5),
        "p95_ms": 1000 * percentile(found, 0.95),
        "min_ms": 1000 * found[0] if found else None,
        "max_ms": 1000 * found[-1] if found else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", metavar="URL", help="a running server; default: start one")
    parser.add_argument(
        "--duration", type=positive_float, default=20.0, metavar="S", help="seconds of chirps"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    args = parser.parse_args(argv)
    progress = Progress()
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.server:
            url = args.server
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            process = start_chatsubo(sys.executable, workdir, uvloop=True, messages_per_second=200)
            url = f"http://127.0.0.1:{stack.enter_context(running(process)).port}"

        async def run() -> None:
            # Side by side in one run: the machine is shared and noisy.
            for low_latency in (True, False):
                results.append(await measure(url, args.duration, progress, low_latency=low_latency))

        run_loop(run())
    for r in results:
        print(
            f"{r['path']:14} mouth-to-ear p50 {r['p50_ms']:5.1f} ms  p95 {r['p95_ms']:5.1f} ms  "
            f"(min {r['min_ms']:.1f}, max {r['max_ms']:.1f}; "
            f"{r['chirps_found']} of {r['chirps_sent']} chirps)"
        )
    ours, theirs = results
    print(f"aiortc's own / inline path, p50: {theirs['p50_ms'] / ours['p50_ms']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["chirps_found"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
