"""Load test: N aiortc mesh peers in P processes, measured as a mesh.

Every peer is a ``chatsubo.peer.mesh.MeshPeer`` with a tone for a voice. They join
R rooms one after another (``--stagger`` apart), settle, and are then measured
for ``--duration`` seconds while each one chats once a second and walks in a
circle at the position rate. Afterwards the last peer of the first room leaves
and joins again ``--rejoins`` times, to time a newcomer meeting a full room.
Everything runs on one shared timeline of the host clock, so the processes need
no coordination beyond a start signal.

Reported: join-to-mesh times, links connected against expected, audio frames
received per link against 50 a second (and gaps in their timestamps), chat
one-way latency, the share of position updates delivered, CPU and memory per
process, and an E-model MOS estimate. It exits non-zero when links fail to
connect. Without ``--server`` it starts its own server on a free port.

    .venv/bin/python scripts/loadtest.py --peers 10 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchkit import (
    Progress,
    Workers,
    percentile,
    recv_pipe,
    run_client_process,
    running,
    start_chatsubo,
)

from chatsubo.channels import POSITION_RATE, Chat
from chatsubo.commandline import positive_float, positive_int
from chatsubo.peer.audio import AudioIn, AudioOut, parse_source
from chatsubo.peer.mesh import MeshPeer, PeerOptions
from chatsubo.peer.signaling import SignalingOptions

if TYPE_CHECKING:
    from benchkit import Pipe

#: Opus frames a second: 20 ms each.
FRAMES_PER_SECOND = 50
#: One-way delay of the audio path itself (frame handed to the sender to frame
#: decoded) on loopback, as scripts/latency.py measured it: with the peer's
#: inline receive path, and with aiortc's own. Added to the measured network
#: delay for the MOS estimate.
INLINE_AUDIO_MS = 8.5
AIORTC_AUDIO_MS = 88.0
#: How often each worker reports progress, and samples its memory while measuring.
PROGRESS_INTERVAL = 0.5
MEMORY_INTERVAL = 10.0
#: Seconds between the rejoins of the last peer, and how long each may take.
REJOIN_INTERVAL = 4.0
REJOIN_DEADLINE = 3.0
#: Beyond the timeline itself: for process start-up and clean shutdown.
STARTUP_DEADLINE = 60.0
SHUTDOWN_DEADLINE = 30.0


# --- the plan ------------------------------------------------------------------------


@dataclass
class PeerPlan:
    """One peer: its place in the joining order, its room and its name."""

    order: int
    room: str
    name: str


@dataclass
class Timeline:
    """Moments on the host clock (``time.time()``) that every process works to."""

    epoch: float
    stagger: float
    measure_start: float
    measure_end: float
    rejoins: int
    end: float

    def start_of(self, plan: PeerPlan) -> float:
        return self.epoch + plan.order * self.stagger

    def rejoin_at(self, k: int) -> float:
        # A second's margin: every process samples its links at measure_end first.
        return self.measure_end + 1.0 + k * REJOIN_INTERVAL


@dataclass
class Job:
    """One worker process's share of the peers, and how to run them."""

    worker: int
    url: str
    peers: list[PeerPlan]
    naive: bool
    aiortc_receive: bool
    #: The name of the peer that leaves and rejoins, if it is ours.
    rejoiner: str | None


# --- one peer --------------------------------------------------------------------------


@dataclass
class LinkSample:
    """A link's receive counters at one moment."""

    audio: AudioIn | None
    frames: int
    gaps: int
    positions_received: int
    positions_sent: int


class LoadPeer:
    """A mesh peer with a voice, that chats and walks on cue and keeps score."""

    def __init__(self, job: Job, plan: PeerPlan, *, hz: float) -> None:
        self.plan = plan
        self.audio = AudioOut(parse_source(f"tone:{hz:g}"), encode_once=not job.naive)
        self.peer = MeshPeer(
            plan.room,
            plan.name,
            SignalingOptions(urls=[job.url]),
            PeerOptions(inline_audio=not job.aiortc_receive),
            audio=self.audio,
        )
        self.connected: set[str] = set()
        self.started_at = 0.0
        self.joined_in: float | None = None
        #: Who this newcomer must connect to: everyone in its peer_list. None until joined.
        self.expected: set[str] | None = None
        self.chat_ms: list[float] = []
        self.measuring = False
        self.peer.on("peerconnected", self._on_connected)
        self.peer.on("chat", self._on_chat)

    async def start(self) -> None:
        self.started_at = time.time()
        await self.peer.start()
        # The links made from peer_list are the ones this newcomer must connect.
        self.expected = set(self.peer.links)
        self._check_joined()

    def _on_connected(self, peer_id: str) -> None:
        self.connected.add(peer_id)
        self._check_joined()

    def _check_joined(self) -> None:
        if self.joined_in is None and self.expected is not None and self.expected <= self.connected:
            self.joined_in = time.time() - self.started_at

    def _on_chat(self, peer_id: str, chat: Chat) -> None:
        if self.measuring:
            self.chat_ms.append(time.time() * 1000 - chat.ts)

    def connected_links(self) -> int:
        return sum(1 for link in self.peer.links.values() if link.connected)

    def sample(self) -> dict[str, LinkSample]:
        samples = {}
        for peer_id, link in self.peer.links.items():
            audio = link.audio_in
            samples[peer_id] = LinkSample(
                audio,
                audio.frames if audio else 0,
                audio.gaps if audio else 0,
                link.positions_received,
                link.positions_sent,
            )
        return samples

    async def walk(self) -> None:
        """Circle at a stroll, updating at the position rate, until cancelled."""
        step = 0
        cx, cy = 4.0 + (self.plan.order % 4) * 5.0, 4.0 + (self.plan.order // 4 % 2) * 7.0
        while True:
            angle = step * 0.1
            self.peer.move(cx + 1.5 * math.cos(angle), cy + 1.5 * math.sin(angle))
            step += 1
            await asyncio.sleep(1 / POSITION_RATE)

    async def chatter(self) -> None:
        """A line of chat a second, until cancelled."""
        n = 0
        while True:
            n += 1
            self.peer.say(f"round {n} from {self.plan.name}")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.peer.close()
        self.audio.stop()


# --- a worker process --------------------------------------------------------------------


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def link_results(
    peers: list[LoadPeer], before: dict[str, dict[str, LinkSample]], seconds: float
) -> list[dict[str, Any]]:
    """Per directed link, what arrived during the window."""
    rows = []
    for peer in peers:
        after = peer.sample()
        for sender, end in after.items():
            start = before.get(peer.plan.name, {}).get(sender)
            same = start is not None and start.audio is end.audio
            rows.append(
                {
                    "receiver": peer.plan.name,
                    "sender": sender,
                    "frames": end.frames - (start.frames if same and start else 0),
                    "expected_frames": round(seconds * FRAMES_PER_SECOND),
                    "gaps": end.gaps - (start.gaps if same and start else 0),
                    "positions_received": end.positions_received
                    - (start.positions_received if start else 0),
                    "positions_sent": end.positions_sent - (start.positions_sent if start else 0),
                    "replaced": not same,
                }
            )
    return rows


async def progress_reporter(pipe: Pipe, peers: dict[str, LoadPeer]) -> None:
    while True:
        started = sum(1 for p in peers.values() if p.started_at)
        links = sum(p.connected_links() for p in peers.values())
        pipe.send(("progress", {"started": started, "links": links}))
        await asyncio.sleep(PROGRESS_INTERVAL)


async def worker_main(pipe: Pipe, job: Job) -> None:
    pipe.send(("ready", None))
    timeline: Timeline = await recv_pipe(pipe)
    peers: dict[str, LoadPeer] = {}
    reporter = asyncio.create_task(progress_reporter(pipe, peers))
    rss_samples: list[tuple[float, int]] = []
    try:

        async def start(plan: PeerPlan) -> None:
            await sleep_until(timeline.start_of(plan))
            peer = LoadPeer(job, plan, hz=220.0 + 20.0 * plan.order)
            peers[plan.name] = peer
            await peer.start()

        await asyncio.gather(*(start(plan) for plan in job.peers))
        await sleep_until(timeline.measure_start)
        at_start = {name: peer.sample() for name, peer in peers.items()}
        connected_at_start = {name: sorted(peer.connected) for name, peer in peers.items()}
        # The ids the window's links are known by (a rejoin later brings a new one).
        names = {peer.peer.peer_id: name for name, peer in peers.items()}
        cpu_start = time.process_time()
        for peer in peers.values():
            peer.measuring = True
        habits = [
            asyncio.create_task(habit)
            for peer in peers.values()
            for habit in (peer.walk(), peer.chatter())
        ]
        while time.time() < timeline.measure_end:
            rss_samples.append((time.time() - timeline.measure_start, rss_bytes()))
            await asyncio.sleep(min(MEMORY_INTERVAL, max(0.0, timeline.measure_end - time.time())))
        cpu = time.process_time() - cpu_start
        seconds = timeline.measure_end - timeline.measure_start
        links = link_results(list(peers.values()), at_start, seconds)
        for habit in habits:
            habit.cancel()
        await asyncio.gather(*habits, return_exceptions=True)
        for peer in peers.values():
            peer.measuring = False
        rss_samples.append((seconds, rss_bytes()))
        rejoin_times = await rejoin(job, timeline, peers)
        await sleep_until(timeline.end)
        result = {
            "worker": job.worker,
            "names": names,
            "joins": {name: peer.joined_in for name, peer in peers.items()},
            "connected_at_start": connected_at_start,
            "links": links,
            "chat_ms": [ms for peer in peers.values() for ms in peer.chat_ms],
            "cpu_percent": 100 * cpu / seconds,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss": rss_samples,
            "rejoins": rejoin_times,
        }
    finally:
        reporter.cancel()
        await asyncio.gather(*(peer.close() for peer in peers.values()), return_exceptions=True)
    pipe.send(("done", result))


async def rejoin(job: Job, timeline: Timeline, peers: dict[str, LoadPeer]) -> list[float | None]:
    """Leave and join again as a new peer, ``rejoins`` times; each join-to-mesh time."""
    if job.rejoiner is None:
        return []
    times: list[float | None] = []
    for k in range(timeline.rejoins):
        await sleep_until(timeline.rejoin_at(k))
        old = peers.pop(job.rejoiner)
        await old.close()
        # A moment for the others to see it go, so the newcomer meets a settled room.
        await asyncio.sleep(0.5)
        fresh = LoadPeer(job, old.plan, hz=220.0 + 20.0 * old.plan.order)
        peers[job.rejoiner] = fresh
        await fresh.start()
        deadline = time.time() + REJOIN_DEADLINE
        while fresh.joined_in is None and time.time() < deadline:
            await asyncio.sleep(0.01)
        times.append(fresh.joined_in)
    return times


def worker_process(pipe: Pipe, job: Job) -> None:
    """Entry point of one worker process."""
    run_client_process(pipe, f"worker {job.worker}", worker_main(pipe, job))


# --- the parent: plan, run, report ------------------------------------------------------


def plan_peers(args: argparse.Namespace) -> list[PeerPlan]:
    rooms = [args.room] if args.rooms == 1 else [f"{args.room}-{r}" for r in range(args.rooms)]
    return [PeerPlan(j, rooms[j % len(rooms)], f"load-{j}") for j in range(args.peers)]


def expected_pairs(plans: list[PeerPlan]) -> int:
    sizes: dict[str, int] = {}
    for plan in plans:
        sizes[plan.room] = sizes.get(plan.room, 0) + 1
    return sum(n * (n - 1) // 2 for n in sizes.values())


def e_model_mos(loss_percent: float, delay_ms: float) -> float:
    """ITU-T G.107 E-model MOS from packet loss and one-way delay.

    Opus has no G.113 impairment values; G.711-with-PLC's (Ie 0, Bpl 25.1)
    stand in, so this ranks runs rather than promising a score.
    """
    ie, bpl = 0.0, 25.1
    d = delay_ms
    id_ = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ie_eff = ie + (95 - ie) * loss_percent / (loss_percent + bpl)
    r = 93.2 - id_ - ie_eff
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def summarize(
    args: argparse.Namespace, plans: list[PeerPlan], results: list[dict[str, Any]]
) -> dict[str, Any]:
    names: dict[str, str] = {}
    for result in results:
        names.update(result["names"])
    room_of = {plan.name: plan.room for plan in plans}
    connected_pairs: set[frozenset[str]] = set()
    seen_from: dict[frozenset[str], int] = {}
    for result in results:
        for name, connected in result["connected_at_start"].items():
            for peer_id in connected:
                other = names.get(peer_id)
                if other is not None and room_of[other] == room_of[name]:
                    pair = frozenset((name, other))
                    seen_from[pair] = seen_from.get(pair, 0) + 1
    connected_pairs = {pair for pair, ends in seen_from.items() if ends == 2}
    joins = sorted(t for r in results for t in r["joins"].values() if t is not None)
    rejoins = [t for r in results for t in r["rejoins"]]
    links = [link for r in results for link in r["links"] if link["sender"] in names]
    ratios = sorted(link["frames"] / link["expected_frames"] for link in links)
    received = sum(link["frames"] for link in links)
    expected = sum(link["expected_frames"] for link in links)
    loss = max(0.0, 100 * (1 - received / expected)) if expected else 100.0
    chat = sorted(ms for r in results for ms in r["chat_ms"])
    positions_sent = sum(link["positions_sent"] for link in links)
    positions_received = sum(link["positions_received"] for link in links)
    chat_p50 = percentile(chat, 0.5)
    audio_ms = args.audio_delay_ms
    if audio_ms is None:
        audio_ms = AIORTC_AUDIO_MS if args.aiortc_receive else INLINE_AUDIO_MS
    delay = (0.0 if math.isnan(chat_p50) else chat_p50) + audio_ms
    return {
        "pairs_expected": expected_pairs(plans),
        "pairs_connected": len(connected_pairs),
        "joins": joins,
        "join_p50": percentile(joins, 0.5),
        "join_p95": percentile(joins, 0.95),
        "join_max": joins[-1] if joins else math.nan,
        "joined": len(joins),
        "rejoins": rejoins,
        "rejoin_p50": percentile(sorted(t for t in rejoins if t is not None), 0.5),
        "rejoin_failed": sum(1 for t in rejoins if t is None),
        "links": len(links),
        "audio_min": ratios[0] if ratios else 0.0,
        "audio_median": statistics.median(ratios) if ratios else 0.0,
        "links_below_99": sum(1 for r in ratios if r < 0.99),
        "gaps": sum(link["gaps"] for link in links),
        "loss_percent": loss,
        "chat_count": len(chat),
        "chat_p50_ms": chat_p50,
        "chat_p99_ms": percentile(chat, 0.99),
        "positions_sent": positions_sent,
        "positions_received": positions_received,
        "positions_delivered": positions_received / positions_sent if positions_sent else 0.0,
        "mos": e_model_mos(loss, delay),
        "mos_delay_ms": delay,
        "processes": [
            {
                "worker": r["worker"],
                "cpu_percent": r["cpu_percent"],
                "peak_rss": r["peak_rss"],
                "rss_growth_mb_per_min": rss_growth(r["rss"]),
            }
            for r in results
        ],
    }


def rss_growth(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of resident memory over the window, in MB a minute."""
    if len(samples) < 2:
        return math.nan
    xs = [t for t, _ in samples]
    ys = [rss / 1e6 for _, rss in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return math.nan
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def table(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    s = summary
    mode = "an encoder per sender" if args.naive else "encode once"
    mode += ", aiortc's receive path" if args.aiortc_receive else ", inline receive path"
    lines = [
        f"Load test: {args.peers} peers in {args.rooms} room(s), {args.procs} process(es), "
        f"{args.duration:g} s measured, {mode}",
        f"  links connected        {s['pairs_connected']}/{s['pairs_expected']} pairs",
        f"  join to mesh           p50 {s['join_p50']:.2f} s  p95 {s['join_p95']:.2f} s  "
        f"max {s['join_max']:.2f} s  ({s['joined']}/{args.peers} meshed)",
    ]
    if s["rejoins"]:
        shown = " ".join("-" if t is None else f"{t:.2f}" for t in s["rejoins"])
        lines.append(f"  join into a full room  p50 {s['rejoin_p50']:.2f} s  (each: {shown})")
    lines += [
        f"  audio frames           min {100 * s['audio_min']:.1f}%  "
        f"median {100 * s['audio_median']:.1f}%  of {FRAMES_PER_SECOND}/s on {s['links']} links; "
        f"{s['links_below_99']} below 99%; {s['gaps']} gaps",
        f"  chat one-way           p50 {s['chat_p50_ms']:.1f} ms  p99 {s['chat_p99_ms']:.1f} ms  "
        f"({s['chat_count']} messages)",
        f"  positions delivered    {100 * s['positions_delivered']:.1f}% of {s['positions_sent']}",
    ]
    for p in s["processes"]:
        lines.append(
            f"  worker {p['worker']}               CPU {p['cpu_percent']:.0f}%  "
            f"peak RSS {p['peak_rss'] / 1e6:.0f} MB  "
            f"growth {p['rss_growth_mb_per_min']:+.1f} MB/min"
        )
    if "server_cpu_percent" in s:
        lines.append(f"  server                 CPU {s['server_cpu_percent']:.1f}%")
    lines.append(
        f"  MOS (E-model)          {s['mos']:.2f}  (loss {s['loss_percent']:.2f}%, "
        f"delay {s['mos_delay_ms']:.0f} ms)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, url: str, server_cpu: Any) -> dict[str, Any]:
    plans = plan_peers(args)
    last_in_first_room = [p for p in plans if p.room == plans[0].room][-1]
    jobs = [
        Job(
            worker=w,
            url=url,
            peers=[p for p in plans if p.order % args.procs == w],
            naive=args.naive,
            aiortc_receive=args.aiortc_receive,
            rejoiner=last_in_first_room.name
            if last_in_first_room.order % args.procs == w and args.rejoins
            else None,
        )
        for w in range(min(args.procs, args.peers))
    ]
    progress = Progress()
    progress.show("starting workers")
    workers = Workers.start(worker_process, jobs)
    try:
        workers.gather("ready", time.monotonic() + STARTUP_DEADLINE)
        epoch = time.time() + 0.5
        measure_start = epoch + args.peers * args.stagger + args.settle
        measure_end = measure_start + args.duration
        timeline = Timeline(
            epoch=epoch,
            stagger=args.stagger,
            measure_start=measure_start,
            measure_end=measure_end,
            rejoins=args.rejoins,
            end=measure_end + 1.0 + args.rejoins * REJOIN_INTERVAL + 1.0,
        )
        workers.send(timeline)
        expected_links = 2 * expected_pairs(plans)
        #: The server's CPU seconds when measuring began and ended, as first seen.
        server_marks: dict[str, float] = {}

        def show(reports: list[Any]) -> None:
            now = time.time()
            started = sum(r["started"] for r in reports if r)
            links = sum(r["links"] for r in reports if r)
            if now < measure_start:
                phase = "joining"
            elif now < measure_end:
                phase = "measuring"
                server_marks.setdefault("start", server_cpu())
            else:
                phase = "rejoining" if args.rejoins else "leaving"
                server_marks.setdefault("end", server_cpu())
            remaining = max(0.0, (measure_end if now < measure_end else timeline.end) - now)
            progress.show(
                phase,
                f"{started}/{args.peers} peers, {links}/{expected_links} link ends connected, "
                f"{remaining:.0f} s to go",
            )

        results = workers.gather(
            "done", time.monotonic() + (timeline.end - time.time()) + SHUTDOWN_DEADLINE, show
        )
    finally:
        workers.stop()
    summary = summarize(args, plans, results)
    if "start" in server_marks and "end" in server_marks:
        spent = server_marks["end"] - server_marks["start"]
        summary["server_cpu_percent"] = 100 * spent / args.duration
    progress.done("done")
    return {"summary": summary, "workers": results}


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", metavar="URL", help="a running server; default: start one")
    parser.add_argument("--room", default="loadtest", help="room name (default: loadtest)")
    parser.add_argument("--peers", type=positive_int, default=10, metavar="N")
    parser.add_argument("--rooms", type=positive_int, default=1, metavar="R")
    parser.add_argument(
        "--duration", type=positive_float, default=30.0, metavar="T", help="seconds measured"
    )
    parser.add_argument(
        "--procs",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="P",
        help="worker processes (default: the number of cores)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument(
        "--naive", action="store_true", help="encode per sender, as plain aiortc does"
    )
    parser.add_argument(
        "--stagger", type=float, default=0.2, metavar="S", help="seconds between joins"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds after the last join before measuring",
    )
    parser.add_argument(
        "--rejoins",
        type=int,
        default=5,
        metavar="K",
        help="times the last peer of the first room leaves and joins again (default: 5)",
    )
    parser.add_argument(
        "--aiortc-receive",
        action="store_true",
        help="receive through aiortc's own jitter buffer and decoder threads",
    )
    parser.add_argument(
        "--audio-delay-ms",
        type=float,
        metavar="MS",
        help=f"audio path delay for the MOS estimate (default: {INLINE_AUDIO_MS:g}, "
        f"or {AIORTC_AUDIO_MS:g} with --aiortc-receive; see scripts/latency.py)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.procs = min(args.procs, args.peers)
    with contextlib.ExitStack() as stack:
        if args.server:
            url = args.server
            server_cpu: Any = lambda: 0.0  # noqa: E731 - nothing to measure
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            process = start_chatsubo(
                sys.executable,
                workdir,
                uvloop=True,
                messages_per_second=200,
                max_room_size=max(10, args.peers),
            )
            server = stack.enter_context(running(process))
            url = f"http://127.0.0.1:{server.port}"
            server_cpu = server.cpu_seconds
        try:
            report = run(args, url, server_cpu)
        except RuntimeError as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
            return 2
    report["machine"] = machine()
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(table(args, report["summary"]))
    if args.json:
        args.json.write_text(json.dumps(_jsonable(report), indent=1))
    summary = report["summary"]
    ok = summary["pairs_connected"] == summary["pairs_expected"] and summary["rejoin_failed"] == 0
    if not ok:
        print("loadtest: some links did not connect", file=sys.stderr)
    return 0 if ok else 1


def _jsonable(value: Any) -> Any:
    """``value`` with NaN as null, which JSON has and NaN it has not."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
