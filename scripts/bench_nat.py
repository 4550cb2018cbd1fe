"""Join times and mouth-to-ear latency through the NAT lab of tests/netlab.py.

Join time is measured from the moment a bot already in the room hears of the
newcomer (``peer_joined``) to the moment its link to the newcomer carries chat
(``peer_connected``), both on that bot's clock: offer and answer with their
candidate gathering (STUN, TURN), ICE checks, DTLS and SCTP. Each round a new
bot process (or a new browser page) joins; process start-up is not counted.

- lan: two bots in one home, host candidates only (no ICE servers);
- stun: homes behind port-preserving NATs, through our STUN port;
- turn: homes behind symmetric NATs, through coturn;
- browser: Chromium behind a symmetric NAT and a bot behind another, through coturn.

Mouth-to-ear latency uses scripts/latency.py's chirps, with the speaker and
the listener in one process (one clock) but each in its own home's namespace,
through port-preserving NATs, without loss and with 5 % of the UDP packets
through one router dropped. Needs root, nft and coturn (and Chromium).

    .venv/bin/python scripts/bench_nat.py --rounds 10 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchkit import REPO, Progress, percentile, wait_until
from latency import CHIRP_EVERY, SEARCH_WINDOW, ChirpSource, Ear, chirp_result

# The lab and the bot launcher live with the tests, at the top of the checkout.
sys.path.insert(0, str(REPO))

from playwright.async_api import Browser, async_playwright

from chatsubo.commandline import positive_float, positive_int
from chatsubo.peer.audio import SAMPLE_RATE, AudioIn, AudioOut
from chatsubo.peer.mesh import MeshPeer
from chatsubo.peer.signaling import SignalingOptions
from tests.browser import LAUNCH_ARGS, Bot, Person
from tests.netlab import CHROMIUM, Home, Lab, Nat, call_in, missing, netlab

ROOM = "bench"
SCENARIOS = ("lan", "stun", "turn", "browser", "latency")
#: Generous: a join that takes this long has failed.
JOIN_DEADLINE = 60.0
#: Packets dropped through the lossy router, in percent.
LOSS = 5
#: Chirps are looked for this long after they left: short of the next one, which
#: would otherwise stand in for a lost one.
LOSS_WINDOW = 0.8 * CHIRP_EVERY / SAMPLE_RATE


def route(event: dict[str, Any]) -> str:
    return f"{event['local']}->{event['remote']}"


#: Starts a guest in round ``i``: its peer id, and how to make it leave.
Guest = Callable[[int], Awaitable[tuple[str, Callable[[], Awaitable[None]]]]]


async def joins(
    lab: Lab, host_home: Home, guest: Guest, rounds: int, progress: Progress, label: str
) -> dict[str, Any]:
    """Seconds from peer_joined to peer_connected, as a bot in ``host_home`` sees guests come."""
    host = await Bot.start(lab.url, ROOM, "host", netns=host_home.ns)
    times: list[float] = []
    routes: collections.Counter[str] = collections.Counter()
    try:
        await host.peer_id()
        for i in range(rounds):
            progress.show(label, f"round {i + 1} of {rounds}")
            guest_id, leave = await guest(i)
            try:
                joined = await host.wait_for("peer_joined", peer=guest_id)
                connected = await host.wait_for("peer_connected", JOIN_DEADLINE, peer=guest_id)
            finally:
                await leave()
            times.append(connected["ts"] - joined["ts"])
            routes[route(connected)] += 1
            await host.wait_for("peer_left", peer=guest_id)
    finally:
        await host.stop()
    return summary(label, times, routes, progress)


def bot_guest(lab: Lab, home: Home) -> Guest:
    """Each round a new bot process in ``home``."""

    async def start(i: int) -> tuple[str, Callable[[], Awaitable[None]]]:
        bot = await Bot.start(lab.url, ROOM, f"guest{i}", netns=home.ns)
        try:
            return await bot.peer_id(), bot.stop
        except BaseException:
            await bot.stop()
            raise

    return start


def page_guest(lab: Lab, browser: Browser) -> Guest:
    """Each round a new page in ``browser`` (which runs in a home)."""

    async def start(i: int) -> tuple[str, Callable[[], Awaitable[None]]]:
        person = await Person.visit(browser, lab.url, f"guest{i}")
        try:
            return await person.enter(ROOM), person.close
        except BaseException:
            await person.close()
            raise

    return start


def summary(
    label: str, times: list[float], routes: collections.Counter[str], progress: Progress
) -> dict[str, Any]:
    found = sorted(times)
    result = {
        "what": label,
        "rounds": len(found),
        "p50_s": percentile(found, 0.5),
        "p95_s": percentile(found, 0.95),
        "min_s": found[0],
        "max_s": found[-1],
        "routes": dict(routes),
    }
    progress.done(f"{label}: {len(found)} joins")
    return result


async def speak(url: str, source: ChirpSource, stop: threading.Event) -> None:
    """The speaker's side: in the room with a chirping voice until ``stop``."""
    voice = AudioOut(source)
    peer = MeshPeer(ROOM, "speaker", SignalingOptions(urls=[url]), audio=voice)
    try:
        await peer.start()
        await asyncio.to_thread(stop.wait)
    finally:
        await peer.close()
        voice.stop()


async def listen(
    url: str, ear: Ear, listening: threading.Event, heard: threading.Event, stop: threading.Event
) -> None:
    """The listener's side: every decoded frame to ``ear``, until ``stop``."""
    peer = MeshPeer(ROOM, "listener", SignalingOptions(urls=[url]))

    def on_audio(peer_id: str, audio_in: AudioIn) -> None:
        audio_in.on_frame = ear.hear
        heard.set()

    peer.on("audio", on_audio)
    try:
        await peer.start()
        listening.set()
        await asyncio.to_thread(stop.wait)
    finally:
        await peer.close()


def mouth_to_ear(lab: Lab, seconds: float, loss: int, progress: Progress) -> dict[str, Any]:
    """Chirps from a peer in one home to a peer in the other, ``loss`` % dropped on the way."""
    label = f"mouth-to-ear, STUN, {loss} % loss"
    speaker_home, listener_home = lab.homes
    source, ear = ChirpSource(), Ear()
    listening, heard, stop = threading.Event(), threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        listener = pool.submit(
            call_in,
            listener_home.ns,
            lambda: asyncio.run(listen(lab.url, ear, listening, heard, stop)),
        )
        try:
            if not listening.wait(JOIN_DEADLINE):
                raise RuntimeError("the listener did not join")
            speaker = pool.submit(
                call_in, speaker_home.ns, lambda: asyncio.run(speak(lab.url, source, stop))
            )
            progress.show(label, "connecting")
            if not heard.wait(JOIN_DEADLINE):
                raise RuntimeError("no audio reached the listener")
            # Chirps sent before the link carried audio would only count as lost.
            first = len(source.sent)
            wait_until(time.monotonic() + seconds + SEARCH_WINDOW, progress, label)
        finally:
            stop.set()
        speaker.result()
        listener.result()
    sent = [t for t in source.sent[first:] if t < time.time() - SEARCH_WINDOW]
    found = sorted(ear.latencies(sent, source.template, within=LOSS_WINDOW))
    progress.done(f"{label}: {len(found)} of {len(sent)} chirps found")
    return chirp_result("what", label, sent, found)


async def run(args: argparse.Namespace, progress: Progress) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rounds = args.rounds
    if "lan" in args.only:
        with netlab([Nat.PORT_PRESERVING], stun=False, turn=False) as lab:
            home = lab.homes[0]
            guest = bot_guest(lab, home)
            results.append(await joins(lab, home, guest, rounds, progress, "bot<->bot, LAN"))
    if "stun" in args.only:
        with netlab([Nat.PORT_PRESERVING] * 2, turn=False) as lab:
            a, b = lab.homes
            results.append(
                await joins(lab, a, bot_guest(lab, b), rounds, progress, "bot<->bot, STUN")
            )
    if "turn" in args.only:
        with netlab([Nat.SYMMETRIC] * 2) as lab:
            a, b = lab.homes
            results.append(
                await joins(lab, a, bot_guest(lab, b), rounds, progress, "bot<->bot, TURN")
            )
    if "browser" in args.only:
        with netlab([Nat.SYMMETRIC] * 2) as lab:
            browser_home, bot_home = lab.homes
            launch_args = [*LAUNCH_ARGS, f"--unsafely-treat-insecure-origin-as-secure={lab.url}"]
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(lab.chromium(browser_home)), args=launch_args
                )
                try:
                    guest = page_guest(lab, browser)
                    label = "browser<->bot, TURN"
                    results.append(await joins(lab, bot_home, guest, rounds, progress, label))
                finally:
                    await browser.close()
    if "latency" in args.only:
        for loss in (0, LOSS):
            with netlab([Nat.PORT_PRESERVING] * 2, turn=False) as lab:
                if loss:
                    lab.lose(lab.homes[0], loss)
                # Its own threads and loops: this one waits for them off the loop.
                result = await asyncio.to_thread(mouth_to_ear, lab, args.duration, loss, progress)
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=10, metavar="N", help="joins per scenario"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=20.0, metavar="S", help="seconds of chirps"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    args = parser.parse_args(argv)
    args.only = args.only or list(SCENARIOS)
    problem = missing()
    if problem is None and "browser" in args.only and not CHROMIUM.exists():
        problem = f"the browser scenario needs Debian's Chromium at {CHROMIUM}"
    if problem is not None:
        print(f"bench_nat.py: {problem}", file=sys.stderr)
        return 2
    progress = Progress()
    results = asyncio.run(run(args, progress))
    for r in results:
        if "p50_s" in r:
            print(
                f"{r['what']:24} join p50 {1000 * r['p50_s']:6.0f} ms  "
                f"p95 {1000 * r['p95_s']:6.0f} ms  "
                f"(min {1000 * r['min_s']:.0f}, max {1000 * r['max_s']:.0f}; "
                f"{r['rounds']} joins; routes {r['routes']})"
            )
        else:
            print(
                f"{r['what']:32} p50 {r['p50_ms']:5.1f} ms  p95 {r['p95_ms']:5.1f} ms  "
                f"(min {r['min_ms']:.1f}, max {r['max_ms']:.1f}; "
                f"{r['chirps_found']} of {r['chirps_sent']} chirps)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
