"""What the page's echo-cancelling loopback costs: CPU, delay, and time to build.

A real server and N bots that talk (tones) in one room; one Chromium page
joins and links to all of them. Each round measures the page twice, with the
loopback and with ``?loopback=off`` (the order alternates between rounds), as
the CPU time of every Chromium process over ``--duration`` seconds. The ratio
of the two, round by round, is what to read: this machine is shared.

With the loopback it also reads, from the loopback's own getStats(), the
average time a frame waits in its jitter buffer (the delay the loopback adds
on top of one 20 ms Opus frame), its bitrate, and how long after the Join
click the mix first played through it.

With ``--echo`` it measures echo instead, in the sound room of
tests/soundroom.py (PulseAudio: the speakers' monitor is the microphone): a
bot talks and records what comes back from one page, for each echo
canceller setting the page's microphone may have, with the loopback and
without. Noise suppression and gain control are off, as in
tests/test_browser_echo.py, so that only the echo canceller acts.

    .venv/bin/python scripts/bench_voice.py --bots 4 --rounds 3 --duration 20
    .venv/bin/python scripts/bench_voice.py --echo --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import REPO, Progress, process_cpu_seconds, running, start_chatsubo

# The bot launcher and the page helpers live with the tests, at the top of the checkout.
sys.path.insert(0, str(REPO))

from playwright.async_api import Browser, async_playwright

from chatsubo.commandline import positive_float, positive_int
from tests.browser import CHROMIUM, LAUNCH_ARGS, Bot, Person, Recording, eventually
from tests.soundroom import BESIDE, echo_dbfs, launch_on_speakers, sound_room
from tests.soundroom import ROOM as ECHO_ROOM
from tests.soundroom import missing as sound_room_missing

ROOM = "bench"
#: Generous: a page that is not linked to every bot by then has failed.
LINK_DEADLINE = 60.0

#: The loopback's far end, summed so far: frames played, their jitter-buffer wait, bytes.
_LOOPBACK_STATS = """
async () => {
  const loopback = window.chatsubo.audio.speakers.loopback;
  if (loopback === null) return null;
  const totals = { emitted: 0, bufferDelay: 0, bytes: 0 };
  (await loopback.receiving.getStats()).forEach((report) => {
    if (report.type !== "inbound-rtp" || report.kind !== "audio") return;
    totals.emitted += report.jitterBufferEmittedCount ?? 0;
    totals.bufferDelay += report.jitterBufferDelay ?? 0;
    totals.bytes += report.bytesReceived ?? 0;
  });
  return totals;
}
"""

#: Whether the mix plays through the loopback yet.
_LOOPBACK_UP = "() => window.chatsubo?.audio?.speakers.output === 'loopback'"


def chromium_cpu_seconds() -> float:
    """CPU time so far of every Chromium process below this one (the browser and its children)."""
    total = 0.0
    mine = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if "chrom" not in stat.split(")", 1)[0] or not _descends_from(int(entry), mine):
                continue
            total += process_cpu_seconds(int(entry))
        except OSError:
            continue  # It ended meanwhile.
    return total


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return False


async def measure(
    browser: Browser, url: str, bot_ids: list[str], loopback: bool, duration: float
) -> dict[str, Any]:
    """One page in the room for ``duration`` seconds, with or without the loopback."""
    path = "/" if loopback else "/?loopback=off"
    person = await Person.visit(browser, url + path, "Bench")
    try:
        await person.join(ROOM)
        clicked = time.monotonic()
        built_s = None
        if loopback:

            async def up() -> bool:
                return bool(await person.page.evaluate(_LOOPBACK_UP))

            await eventually(up, LINK_DEADLINE, lambda: "the loopback is up", interval=0.02)
            built_s = time.monotonic() - clicked
        await person.in_room(ROOM)
        await person.connected_to(*bot_ids, timeout=LINK_DEADLINE)
        await person.hears(*bot_ids, timeout=LINK_DEADLINE)
        before_stats = await person.page.evaluate(_LOOPBACK_STATS)
        cpu_before, started = chromium_cpu_seconds(), time.monotonic()
        await asyncio.sleep(duration)
        cpu = chromium_cpu_seconds() - cpu_before
        elapsed = time.monotonic() - started
        after_stats = await person.page.evaluate(_LOOPBACK_STATS)
        person.assert_no_errors()
    finally:
        await person.close()
    result: dict[str, Any] = {"loopback": loopback, "cpu_percent": 100 * cpu / elapsed}
    if loopback:
        if before_stats is None or after_stats is None:
            raise RuntimeError("the loopback fell during the measurement")
        frames = after_stats["emitted"] - before_stats["emitted"]
        result["built_s"] = built_s
        result["jitter_buffer_ms"] = (
            1000 * (after_stats["bufferDelay"] - before_stats["bufferDelay"]) / frames
        )
        result["kbit_s"] = 8 * (after_stats["bytes"] - before_stats["bytes"]) / elapsed / 1000
    return result


async def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-voice-") as workdir:
        server = start_chatsubo(
            sys.executable, Path(workdir), uvloop=False, messages_per_second=100.0
        )
        with running(server):
            url = f"http://127.0.0.1:{server.port}"
            bots = [
                await Bot.start(url, ROOM, f"Bot {i}", "--audio", "tone") for i in range(args.bots)
            ]
            try:
                progress.show("bots", f"0 of {args.bots} joined")
                bot_ids = [str((await bot.wait_for("joined"))["peer"]) for bot in bots]
                rounds: list[dict[str, Any]] = []
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(
                        executable_path=str(CHROMIUM), args=LAUNCH_ARGS
                    )
                    try:
                        for n in range(args.rounds):
                            # Alternate which goes first, so that drift favours neither.
                            order = (True, False) if n % 2 == 0 else (False, True)
                            pair = {}
                            for loopback in order:
                                label = "with" if loopback else "without"
                                progress.show(
                                    f"round {n + 1} of {args.rounds}", f"{label} loopback"
                                )
                                pair[loopback] = await measure(
                                    browser, url, bot_ids, loopback, args.duration
                                )
                            on, off = pair[True], pair[False]
                            on["ratio"] = on["cpu_percent"] / off["cpu_percent"]
                            rounds.append({"with": on, "without": off})
                            progress.done(
                                f"round {n + 1}: Chromium {on['cpu_percent']:.1f} % of a core "
                                f"with the loopback, {off['cpu_percent']:.1f} % without "
                                f"({on['ratio']:.2f}x)"
                            )
                    finally:
                        await browser.close()
            finally:
                for bot in bots:
                    await bot.stop()
    with_loopback = [r["with"] for r in rounds]
    return {
        "bots": args.bots,
        "duration_s": args.duration,
        "rounds": rounds,
        "cpu_ratio_median": statistics.median(r["ratio"] for r in with_loopback),
        "jitter_buffer_ms_median": statistics.median(r["jitter_buffer_ms"] for r in with_loopback),
        "kbit_s_median": statistics.median(r["kbit_s"] for r in with_loopback),
        "built_s_median": statistics.median(r["built_s"] for r in with_loopback),
    }


#: The echo canceller settings and pages measured with --echo: (echoCancellation, path).
ECHO_CASES: list[tuple[bool | str, str]] = [
    (False, "/?loopback=off"),
    ("remote-only", "/?loopback=off"),
    ("remote-only", "/"),
    (True, "/?loopback=off"),
    (True, "/"),
]


async def run_echo(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Each of ECHO_CASES, ``--rounds`` times: how loud a talking bot hears itself come back."""
    levels: dict[str, list[float]] = {f"{mode}, {path}": [] for mode, path in ECHO_CASES}
    with tempfile.TemporaryDirectory(prefix="bench-echo-") as workdir:
        server = start_chatsubo(
            sys.executable, Path(workdir), uvloop=False, messages_per_second=100.0
        )
        with running(server), sound_room() as pulse:
            url = f"http://127.0.0.1:{server.port}"
            recording = Recording(Path(workdir) / "heard.wav")
            bot = await Bot.start(
                url, ECHO_ROOM, "Talker", "--audio", "tone:440", "--record", str(recording.path),
                "--position", f"{BESIDE[0]},{BESIDE[1]}",
            )  # fmt: skip
            try:
                async with async_playwright() as playwright:
                    browser = await launch_on_speakers(playwright, pulse)
                    try:
                        for n in range(args.rounds):
                            for mode, path in ECHO_CASES:
                                label = f"{mode}, {path}"
                                progress.show(f"round {n + 1} of {args.rounds}", label)
                                level, _, _ = await echo_dbfs(
                                    browser, url, bot, recording, path, mode
                                )
                                levels[label].append(level)
                    finally:
                        await browser.close()
            finally:
                await bot.stop()
    medians = {label: statistics.median(values) for label, values in levels.items()}
    return {"rounds": args.rounds, "levels_dbfs": levels, "median_dbfs": medians}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bots", type=positive_int, default=4, metavar="N", help="bots talking in the room"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, metavar="N", help="pairs of measurements"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=20.0, metavar="S", help="seconds per measurement"
    )
    parser.add_argument(
        "--echo", action="store_true", help="measure echo in the sound room instead (PulseAudio)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"bench_voice.py: needs Debian's Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    if args.echo:
        problem = sound_room_missing()
        if problem is not None:
            print(f"bench_voice.py: {problem}", file=sys.stderr)
            return 2
        echo = asyncio.run(run_echo(args, Progress()))
        blind = echo["median_dbfs"][f"False, {ECHO_CASES[0][1]}"]
        for label, level in echo["median_dbfs"].items():
            print(f"echoCancellation {label:28} echo {level:6.1f} dBFS ({level - blind:+.1f} dB)")
        if args.json:
            args.json.write_text(json.dumps(echo, indent=1))
        return 0
    result = asyncio.run(run(args, Progress()))
    print(
        f"loopback: Chromium CPU {result['cpu_ratio_median']:.2f}x of playing directly "
        f"(median of {args.rounds} rounds, {args.bots} bots); jitter buffer "
        f"{result['jitter_buffer_ms_median']:.1f} ms; {result['kbit_s_median']:.0f} kbit/s; "
        f"up {1000 * result['built_s_median']:.0f} ms after Join"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
