"""Load test: aiortc mesh peers in P processes, or a crowd walking a big room.

Three tests, all against a server of its own on a free port unless given
``--server`` (started as a separate process, so that its CPU time and memory
can be read from /proc), with every process working to one timeline on the
host clock.

The full-mesh test (the default): N ``chatsubo.peer.mesh.MeshPeer`` peers,
each with a tone for a voice, join R rooms one after another (``--stagger``
apart), settle, and are then measured for ``--duration`` seconds while each
one chats once a second and walks in a circle at the position rate. Every
room is a full mesh, whatever its size. Afterwards the last peer of the
first room leaves and joins again ``--rejoins`` times, to time a newcomer
meeting a full room. Reported: join-to-mesh times, links connected against
expected, audio frames received per link against 50 a second (and gaps in
their timestamps), chat one-way latency, the share of position updates
delivered, CPU and memory per process, and an E-model MOS estimate. It exits
non-zero when links fail to connect.

``--signaling-only``: N protocol-level peers with no media (plain WebSocket
clients, hundreds to a process) join one room and walk the map, a random
walk with pauses at 1-1.4 m/s, each sending ``update {x, y}`` at most 4 times
a second and only after moving. Each follows its ``link`` and ``unlink``
directives. The parent checks every directive against the link rule
(chatsubo/server/topology.py), continuously, taking the positions the clients
sent as the truth: nobody beyond K links; no pair linked while beyond the
unlink range for longer than the hysteresis; no audible pair left unlinked
while both ends have room; both ends agree; exactly one offerer per link;
each within ``--tolerance``. Reported: links per peer, link set-ups and
tear-downs a minute, the server's CPU (overall, and over each position
update and each directive), its memory, and how fast it answers pings.
Violations are printed and make the exit code 1.

``--proximity``: the same walk with real aiortc peers (``MeshPeer``, each
voice encoded once), and with ``--talk`` in talk-spurts, whose pauses DTX does
not send. Besides the rule and its figures: the time from two peers coming
within the link range to the first decoded audio frame on their link, and
the audio frames delivered on every directed link, received / (received +
lost) as the inline receive path counts them, and CPU and memory per process.

    .venv/bin/python scripts/loadtest.py --peers 10 --duration 60
    .venv/bin/python scripts/loadtest.py --signaling-only --peers 500 --duration 60
    .venv/bin/python scripts/loadtest.py --proximity --talk --peers 30 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from benchkit import (
    Progress,
    ServerProcess,
    Workers,
    percentile,
    recv_pipe,
    run_client_process,
    running,
    start_chatsubo,
)
from numpy.typing import NDArray

from chatsubo import protocol as proto
from chatsubo.channels import POSITION_RATE, Chat
from chatsubo.commandline import positive_float, positive_int
from chatsubo.peer.audio import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    AudioIn,
    AudioOut,
    AudioSource,
    Pcm,
    ToneSource,
    parse_source,
)
from chatsubo.peer.mesh import MeshPeer, PeerOptions
from chatsubo.peer.receiving import InlineAudioPath
from chatsubo.peer.signaling import SignalingOptions, websocket_url
from chatsubo.protocol import POSITION_UPDATES_PER_SECOND
from chatsubo.server.cli import MAX_ROOM_SIZE
from chatsubo.server.links import POSITIONS_INTERVAL, RULE_INTERVAL
from chatsubo.server.topology import LinkRules, Pair, choose_links, pair
from chatsubo.space import BAR, Rect

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
        #: Who this newcomer must connect to: everyone in its peer_list, as the
        #: server links everyone in a room of up to ``--full-mesh-up-to``. None until joined.
        self.expected: set[str] | None = None
        self.chat_ms: list[float] = []
        self.measuring = False
        self.peer.on("peerconnected", self._on_connected)
        self.peer.on("chat", self._on_chat)

    async def start(self) -> None:
        self.started_at = time.time()
        await self.peer.start()
        self.expected = set(self.peer.present)
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


# --- walking, talking and the link rule: --signaling-only and --proximity -------------


#: Walking speed in m/s, and the pauses between walks in seconds (1 s plus an
#: exponential of this mean, at most ``PAUSE_MAX``).
WALK_SPEEDS = (1.0, 1.4)
PAUSE_MEAN = 2.5
PAUSE_MAX = 8.0
#: Meters between the points of a planned path that are checked for furniture.
PATH_STEP = 0.5
#: The whole bar, to pick spots from (``BarMap.free_spot`` defaults to the arrival area).
WHOLE_BAR = Rect(0.0, 0.0, BAR.map.width, BAR.map.height)
#: ITU-T P.59's conversational model: talk-spurts and pauses, each exponential,
#: with these means in seconds.
TALK_MEAN = 1.0
PAUSE_IN_SPEECH_MEAN = 1.5
#: Seconds between two position updates a signaling-only peer may send
#: (``POSITION_UPDATES_PER_SECOND``), and the groups its ticks are spread over.
UPDATE_INTERVAL = 1 / POSITION_UPDATES_PER_SECOND
UPDATE_PHASES = 5
#: How often workers send their events to the parent, and how far behind the
#: slowest worker's last report the parent checks the rule (so that every
#: peer id in a directive is known by then).
REPORT_INTERVAL = 0.2
CHECK_LAG = 1.0
#: Seconds between two looks at the whole room by the rule checker.
CHECK_TICK = 0.1
#: Beyond what the rule itself allows: its tick, the positions batch and a
#: margin for delivery on a busy machine.
DEFAULT_TOLERANCE = RULE_INTERVAL + POSITIONS_INTERVAL + 0.25
#: How long a peer may seem to hold more than K links. The server sends each
#: step's ``unlink`` before its ``link``, so none should; this is left for the
#: replay, which orders events by timestamps taken in several processes.
OVER_K_GRACE = 0.2
#: Directed links with fewer frames (in and lost) than this are left out of the
#: per-link minimum: one lost frame of ten says nothing.
MIN_LINK_FRAMES = 50
#: Seconds between two pings of the probe that times the server's replies.
PROBE_INTERVAL = 0.25
#: A link not connected this long after its ``link`` counts as failed.
CONNECT_DEADLINE = BAR.peer.connect_timeout


class Walker:
    """A random walk with pauses: to a free spot, straight and clear of furniture, then a rest."""

    def __init__(self, rng: random.Random, now: float) -> None:
        self.rng = rng
        self.speed = rng.uniform(*WALK_SPEEDS)
        self.x, self.y = BAR.map.free_spot(rng, [], WHOLE_BAR)
        self.target: tuple[float, float] | None = None
        # Some start off walking, others after a rest, so that not all set out at once.
        self.rest_until = now + rng.uniform(0.0, PAUSE_MEAN)
        self.last = now

    @property
    def position(self) -> tuple[float, float]:
        """Where it stands, to the centimeter: what it tells the server."""
        return (round(self.x, 2), round(self.y, 2))

    def _clear(self, x: float, y: float) -> bool:
        steps = max(1, math.ceil(math.hypot(x - self.x, y - self.y) / PATH_STEP))
        return all(
            BAR.map.is_free(
                self.x + (x - self.x) * i / steps, self.y + (y - self.y) * i / steps, []
            )
            for i in range(1, steps + 1)
        )

    def _plan(self) -> tuple[float, float]:
        """Somewhere free to walk to in a straight line; furniture is avoided loosely."""
        spot = BAR.map.free_spot(self.rng, [], WHOLE_BAR)
        for _ in range(20):
            if self._clear(*spot):
                break
            spot = BAR.map.free_spot(self.rng, [], WHOLE_BAR)
        return spot

    def step(self, now: float) -> bool:
        """Walk on to ``now`` (host clock); whether it moved."""
        dt, self.last = now - self.last, now
        if self.target is None:
            if now < self.rest_until:
                return False
            self.target = self._plan()
        tx, ty = self.target
        left = math.hypot(tx - self.x, ty - self.y)
        reach = self.speed * dt
        if reach >= left:
            self.x, self.y = tx, ty
            self.target = None
            self.rest_until = now + min(1.0 + self.rng.expovariate(1 / PAUSE_MEAN), PAUSE_MAX)
        else:
            self.x += (tx - self.x) * reach / left
            self.y += (ty - self.y) * reach / left
        return True


class TalkSpurts(AudioSource):
    """A tone in talk-spurts and pauses, each of exponential length (ITU-T P.59), on 20 ms frames.

    With DTX the pauses are not sent. ``switches`` records when on the host
    clock each spurt or pause began, to tell later whether it was talking at
    a given moment.
    """

    def __init__(self, hz: float, rng: random.Random) -> None:
        self.voice = ToneSource(hz)
        self.rng = rng
        self.talking = rng.random() < TALK_MEAN / (TALK_MEAN + PAUSE_IN_SPEECH_MEAN)
        self.left = self._draw()
        self.switches: list[tuple[float, bool]] = []
        self.frames = 0
        self.spoken = 0
        self._silence = np.zeros(FRAME_SAMPLES, np.int16)

    def _draw(self) -> int:
        mean = TALK_MEAN if self.talking else PAUSE_IN_SPEECH_MEAN
        return max(1, round(self.rng.expovariate(1 / mean) / FRAME_SECONDS))

    def read(self) -> Pcm:
        if not self.switches:
            self.switches.append((time.time(), self.talking))
        if self.left <= 0:
            self.talking = not self.talking
            self.left = self._draw()
            self.switches.append((time.time(), self.talking))
        self.left -= 1
        self.frames += 1
        if self.talking:
            self.spoken += 1
            return self.voice.read()
        return self._silence


def talking_at(switches: list[tuple[float, bool]], moment: float) -> bool:
    """Whether a :class:`TalkSpurts` with these switches was talking at ``moment``."""
    i = bisect.bisect_right([t for t, _ in switches], moment)
    return switches[i - 1][1] if i else False


#: What the checker looks for, and what each means.
VIOLATIONS = {
    "over_k": "a peer held more than K links",
    "far": "a pair stayed linked beyond the unlink range for longer than the hysteresis",
    "unheard": "an audible pair stayed unlinked while both ends had room for a link",
    "one_sided": "the two ends of a pair disagreed on whether they are linked",
    "offerers": "a link without exactly one offerer",
    "not_meshed": "a pair left unlinked in a small room, which is a full mesh",
}

#: An event from a worker: (kind, host time, peer index, ...). Kinds: "j" joined
#: (peer id), "p" position sent to the server (x, y), "l" link (other id, offer),
#: "u" unlink or the other left (other id), "x" left or dropped.
Event = tuple[Any, ...]


@dataclass
class Violation:
    """One breach of the rule, found when its tolerance ran out."""

    kind: str
    #: Host time when the condition began, and when it became a violation.
    since: float
    found: float
    peers: tuple[str, ...]
    detail: str


@dataclass
class Setup:
    """A pair linked (its first ``link``), with when it came within the link range."""

    a: int
    b: int
    at: float
    #: When the pair last came within the link range before this (to the
    #: checker's tick), if it did while the room was big (NaN otherwise), and
    #: whether both ends had fewer than K links all the while since.
    entered: float
    had_room: bool
    #: Since when the rule, run here on the clients' positions and links,
    #: wanted the pair linked (to the checker's tick; NaN if it did not, or
    #: the checker does not run it).
    wanted: float = math.nan


class RuleChecker:
    """Follows every peer's links and positions, as its clients saw them, and checks the rule.

    Positions are the ones the clients sent the server; links are the
    directives each client received. Conditions are looked at every
    ``CHECK_TICK`` seconds of the host clock, in the order of the events'
    timestamps; each becomes a violation once it has held longer than what
    the rule allows plus ``tolerance``.
    """

    def __init__(
        self,
        capacity: int,
        rules: LinkRules,
        tolerance: float,
        window: tuple[float, float],
        hearing_range: float = BAR.distance_model.hearing_range,
        *,
        reference: bool = False,
    ) -> None:
        n = capacity
        #: Whether to run the rule itself on the clients' view every tick, to
        #: know since when it wants each pair linked: cheap for tens of peers.
        self.reference = reference
        self.ref_far_since: dict[Pair, float] = {}
        self.wanted_since: dict[Pair, float] = {}
        self.peer_ids: list[str] = [""] * n
        self.rules = rules
        self.tolerance = tolerance
        self.hearing_range = hearing_range
        self.window = window
        self.ids: dict[str, int] = {}
        self.names: list[str] = [str(i) for i in range(n)]
        self.member = np.zeros(n, bool)
        self.pos = np.full((n, 2), np.nan)
        self.has = np.zeros((n, n), bool)
        self.offer = np.zeros((n, n), bool)
        self.deg = np.zeros(n, np.int64)
        self.last_change = np.full(n, -np.inf)
        self.last_moved = np.full(n, -np.inf)
        self.upper = np.triu(np.ones((n, n), bool), 1)
        self.distance = np.full((n, n), np.nan)
        self._moved = False
        self.big = False
        self.since: dict[str, NDArray[np.float64]] = {}
        self.reported: dict[str, NDArray[np.bool_]] = {}
        self.entered = np.full((n, n), np.nan)
        self.had_room = np.zeros((n, n), bool)
        self.big_since = math.inf
        #: When each peer went beyond K links, and how long such moments lasted.
        self.over_k_at = np.full(n, np.nan)
        self.over_k_seconds: list[float] = []
        self._pending: list[Event] = []
        self.next_tick = -math.inf
        self.violations: list[Violation] = []
        self.counts = dict.fromkeys(VIOLATIONS, 0)
        #: How long each condition lasted, each time one ended within the window
        #: (to the tick): what the rule's checks had to check.
        self.episodes: dict[str, list[float]] = {}
        #: Times a peer held K + 1 links for a moment (see ``OVER_K_GRACE``).
        self.momentary_over_k = 0
        self.max_links_momentary = 0
        self.unknown_peers = 0
        # Measured in the window only.
        self.update_times: list[float] = []
        self.directive_times: list[float] = []
        self.links_directives = 0
        self.unlink_directives = 0
        self.setups: list[Setup] = []
        self.teardowns = 0
        self.ticks = 0
        self.degree_sum = 0
        self.degree_count = 0
        self.max_links = 0
        self.links_histogram: dict[int, int] = {}

    # --- events ---------------------------------------------------------------------

    def feed(self, events: list[Event]) -> None:
        """Take a worker's events; they are applied once every worker has reported past them."""
        for event in events:
            if event[0] == "j":
                self.ids[event[3]] = event[2]
                self.peer_ids[event[2]] = event[3]
                self.names[event[2]] = event[4]
        self._pending.extend(events)

    def advance(self, until: float) -> None:
        """Apply the events up to ``until`` in time order, looking at the room every tick."""
        if self.next_tick == -math.inf:
            if not self._pending:
                return
            # The first tick comes with the first event.
            self._pending.sort(key=lambda e: e[1])
            self.next_tick = self._pending[0][1]
        if self.next_tick > until:
            return
        self._pending.sort(key=lambda e: e[1])
        i = 0
        while self.next_tick <= until:
            while i < len(self._pending) and self._pending[i][1] <= self.next_tick:
                self._apply(self._pending[i])
                i += 1
            self._evaluate(self.next_tick)
            self.next_tick += CHECK_TICK
        del self._pending[:i]

    def _in_window(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]

    def _apply(self, event: Event) -> None:
        kind, t, a = event[0], event[1], event[2]
        self.last_change[a] = t
        if kind == "j":
            self.member[a] = True
        elif kind == "p":
            self.pos[a] = (event[3], event[4])
            self.last_moved[a] = t
            self._moved = True
            if self._in_window(t):
                self.update_times.append(t)
        elif kind == "x":
            self.member[a] = False
            self.over_k_at[a] = np.nan
            self.pos[a] = np.nan
            self._moved = True
            for other in np.nonzero(self.has[a])[0]:
                self.deg[other] -= self.has[other, a]
            self.has[a, :] = self.has[:, a] = False
            self.deg[a] = 0
        elif kind in ("l", "u"):
            b = self.ids.get(event[3])
            if b is None:
                self.unknown_peers += 1
                return
            if self._in_window(t):
                self.directive_times.append(t)
                if kind == "l":
                    self.links_directives += 1
                else:
                    self.unlink_directives += 1
            was_linked = bool(self.has[a, b] or self.has[b, a])
            if kind == "l":
                if not self.has[a, b]:
                    self.has[a, b] = True
                    self.deg[a] += 1
                self.offer[a, b] = bool(event[4])
                if self.big and self.deg[a] > self.rules.max_links and np.isnan(self.over_k_at[a]):
                    self.momentary_over_k += 1
                    self.over_k_at[a] = t
                self.max_links_momentary = max(self.max_links_momentary, int(self.deg[a]))
                if not was_linked and self._in_window(t):
                    self.setups.append(self._setup(a, b, t))
            else:
                if self.has[a, b]:
                    self.has[a, b] = False
                    self.deg[a] -= 1
                if self.deg[a] <= self.rules.max_links and not np.isnan(self.over_k_at[a]):
                    self.over_k_seconds.append(t - float(self.over_k_at[a]))
                    self.over_k_at[a] = np.nan
                if was_linked and not self.has[b, a] and self._in_window(t):
                    self.teardowns += 1

    def _setup(self, a: int, b: int, t: float) -> Setup:
        # Entries are kept for (a, b) with a < b.
        lo, hi = min(a, b), max(a, b)
        entered, room = float(self.entered[lo, hi]), bool(self.had_room[lo, hi])
        d = math.dist(self.pos[a], self.pos[b])
        k = self.rules.max_links
        # Our degree already counts this link.
        room_now = bool(self.deg[a] - 1 < k and self.deg[b] < k)
        if math.isnan(entered) and self.big and d <= self.rules.link_range:
            # Came within range since the last tick.
            entered = float(max(self.last_moved[a], self.last_moved[b]))
            room = True
        if not math.isfinite(entered):
            # In range since before the room was big, or not in range at all.
            entered = math.nan
        wanted = self.wanted_since.get(pair(self.peer_ids[a], self.peer_ids[b]), math.nan)
        return Setup(a, b, t, entered, room and room_now, wanted)

    # --- looking at the room --------------------------------------------------------------

    def _evaluate(self, t: float) -> None:
        rules = self.rules
        members = self.member
        big = int(members.sum()) > rules.full_mesh_up_to
        if big != self.big:
            # The rule changed: every clock starts again.
            self.big = big
            self.since.clear()
            self.reported.clear()
            self.entered[:] = np.nan
            self.big_since = t if big else math.inf
        if self._moved:
            dx = self.pos[:, None, 0] - self.pos[None, :, 0]
            dy = self.pos[:, None, 1] - self.pos[None, :, 1]
            self.distance = np.hypot(dx, dy)
            self._moved = False
        d = self.distance
        valid = members[:, None] & members[None, :] & self.upper
        has = self.has
        linked = has | has.T
        tol = self.tolerance
        k = rules.max_links
        if big:
            room = self.deg < k
            with np.errstate(invalid="ignore"):
                far = linked & (d > rules.unlink_range)
                near = d < self.hearing_range
                in_range = valid & (d <= rules.link_range)
            self._track("far", far & valid, rules.hysteresis + tol, t)
            self._track("unheard", ~linked & near & room[:, None] & room[None, :] & valid, tol, t)
            self._track("over_k", members & (self.deg > k), OVER_K_GRACE, t)
            fresh = in_range & np.isnan(self.entered)
            if fresh.any():
                ia, ib = np.nonzero(fresh)
                entered = np.maximum(self.last_moved[ia], self.last_moved[ib])
                # In range already when the rule began to apply: not an arrival.
                entered[entered < self.big_since] = -np.inf
                self.entered[ia, ib] = entered
                self.had_room[ia, ib] = True
            self.entered[~in_range] = np.nan
            waiting = in_range & ~linked
            self.had_room[waiting] &= (room[:, None] & room[None, :])[waiting]
            if self.reference:
                self._run_rule(t, linked)
        else:
            self._track("not_meshed", ~linked & valid, tol, t)
        self._track("one_sided", (has != has.T) & valid, tol, t)
        self._track("offerers", has & has.T & (self.offer == self.offer.T) & valid, tol, t)
        if self._in_window(t) and members.any():
            degrees = self.deg[members]
            self.ticks += 1
            self.degree_sum += int(degrees.sum())
            self.degree_count += len(degrees)
            self.max_links = max(self.max_links, int(degrees.max()))
            for value, count in zip(*np.unique(degrees, return_counts=True), strict=True):
                self.links_histogram[int(value)] = self.links_histogram.get(int(value), 0) + int(
                    count
                )

    def _run_rule(self, t: float, linked: NDArray[np.bool_]) -> None:
        """Note since when the rule, on what the clients say, wants each unlinked pair linked."""
        ids = self.peer_ids
        members = [int(i) for i in np.nonzero(self.member)[0]]
        placed = {ids[i]: (float(self.pos[i, 0]), float(self.pos[i, 1])) for i in members}
        placed = {k: v for k, v in placed.items() if not math.isnan(v[0])}
        ia, ib = np.nonzero(linked & self.upper)
        now_linked = {pair(ids[a], ids[b]) for a, b in zip(ia, ib, strict=True)}
        decided = choose_links(
            {ids[i] for i in members}, placed, now_linked, self.ref_far_since, t, self.rules
        )
        self.ref_far_since = dict(decided.far_since)
        wanted = decided.pairs - now_linked
        # It began after the last tick, when it did not want it yet.
        self.wanted_since = {key: self.wanted_since.get(key, t - CHECK_TICK) for key in wanted}

    def _track(self, kind: str, holds: NDArray[np.bool_], limit: float, t: float) -> None:
        """Clock how long each pair (or, for a 1-d ``holds``, each peer) has met condition
        ``kind``; report those over ``limit``."""
        since = self.since.get(kind)
        if since is None:
            since = self.since[kind] = np.full(holds.shape, np.nan)
            self.reported[kind] = np.zeros(holds.shape, bool)
        reported = self.reported[kind]
        fresh = holds & np.isnan(since)
        if fresh.any():
            # It began with the last event of the peer, or of either end of the pair.
            where = np.nonzero(fresh)
            since[where] = np.maximum.reduce([self.last_change[i] for i in where])
        self._ended(kind, since, holds, t)
        since[~holds] = np.nan
        reported[~holds] = False
        due = holds & ~reported & (t - np.nan_to_num(since, nan=t) > limit)
        for index in zip(*np.nonzero(due), strict=True):
            reported[index] = True
            self._report(kind, float(since[index]), t, tuple(int(i) for i in index))

    def _ended(
        self, kind: str, since: NDArray[np.float64], holds: NDArray[np.bool_], t: float
    ) -> None:
        """Note how long each spell of ``kind`` that ends now lasted, in the window."""
        if not self._in_window(t):
            return
        ended = ~holds & ~np.isnan(since)
        if ended.any():
            self.episodes.setdefault(kind, []).extend((t - since[ended]).tolist())

    def _report(self, kind: str, since: float, t: float, peers: tuple[int, ...]) -> None:
        self.counts[kind] += 1
        names = tuple(self.names[i] for i in peers)
        if len(peers) == 2:
            a, b = peers
            detail = (
                f"{math.dist(self.pos[a], self.pos[b]):.1f} m apart, "
                f"{self.deg[a]} and {self.deg[b]} links, "
                f"{'linked' if self.has[a, b] else 'unlinked'} at {names[0]}, "
                f"{'linked' if self.has[b, a] else 'unlinked'} at {names[1]}"
            )
            if kind == "offerers":
                detail += f", offer flags {bool(self.offer[a, b])}/{bool(self.offer[b, a])}"
        else:
            detail = f"{self.deg[peers[0]]} links"
        self.violations.append(Violation(kind, since, t, names, detail))

    # --- results --------------------------------------------------------------------------

    def count_between(self, times: list[float], start: float, end: float) -> int:
        """How many of ``times`` (sorted) fall in [start, end)."""
        return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


# --- the workers of --signaling-only and --proximity ------------------------------------


@dataclass
class WalkJob:
    """One worker's share of the walking peers, and how they behave."""

    worker: int
    url: str
    peers: list[PeerPlan]
    seed: int
    talk: bool
    #: Whether this worker times the server's answers to pings: the probe, a
    #: worker of its own with no peers, so that a busy worker's loop does not
    #: slow its readings.
    probe: bool
    #: Real aiortc peers (``--proximity``), or protocol-level ones.
    proximity: bool


class EventLog:
    """What a worker's peers did, with host times, until the next report takes it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, *event: Any) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def report(pipe: Pipe, seq: int, log: EventLog, status: dict[str, Any]) -> None:
    """Send the parent the events so far; every event up to ``as_of`` is among them."""
    as_of = time.time()
    pipe.send(("progress", {"seq": seq, "as_of": as_of, "events": log.take(), **status}))


async def reporter(pipe: Pipe, log: EventLog, status: Callable[[], dict[str, Any]]) -> None:
    for seq in itertools.count():
        await asyncio.sleep(REPORT_INTERVAL)
        report(pipe, seq, log, status())


async def probe(http: aiohttp.ClientSession, url: str, until: float) -> list[tuple[float, float]]:
    """Ping the server every ``PROBE_INTERVAL`` until ``until``: (sent at, round trip in ms)."""
    samples: list[tuple[float, float]] = []
    async with http.ws_connect(websocket_url(url)) as ws:

        async def read() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    message = proto.decode_server(msg.data)
                    if isinstance(message, proto.Pong):
                        samples.append((message.t, 1000 * (time.time() - message.t)))

        reading = asyncio.create_task(read())
        try:
            while time.time() < until:
                await ws.send_str(proto.encode(proto.Ping(t=time.time())).decode())
                await asyncio.sleep(PROBE_INTERVAL)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    return samples


#: How every ``positions`` batch starts: those are counted, not decoded.
POSITIONS_PREFIX = proto.encode(proto.Positions(peers=[])).decode().split(",")[0]


class ProtocolPeer:
    """A member that speaks the protocol and nothing else: it walks, and keeps its links."""

    def __init__(self, plan: PeerPlan, walker: Walker, log: EventLog) -> None:
        self.plan = plan
        self.walker = walker
        self.log = log
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.peer_id: str | None = None
        #: Linked peers, and whether we are to offer to each.
        self.links: dict[str, bool] = {}
        self.sent: tuple[float, float] | None = None
        self.sent_at = -math.inf
        self.batches = 0
        self.batch_bytes = 0
        self.errors: list[str] = []
        self.dropped = False
        self.closing = False
        self._reader: asyncio.Task[None] | None = None

    async def join(self, http: aiohttp.ClientSession, url: str) -> None:
        """Connect, join the room and say where we stand; then follow the server."""
        ws = self.ws = await http.ws_connect(websocket_url(url))
        welcome = await self._receive(ws)
        if not isinstance(welcome, proto.Welcome):
            raise RuntimeError(f"{self.plan.name}: the server sent {welcome!r} before welcome")
        await ws.send_str(
            proto.encode(proto.Join(room_id=self.plan.room, name=self.plan.name)).decode()
        )
        while not isinstance(message := await self._receive(ws), proto.PeerList):
            if isinstance(message, proto.Error):
                raise RuntimeError(
                    f"{self.plan.name} could not join: {message.code.value}: {message.message}"
                )
        now = time.time()
        self.peer_id = message.peer_id
        self.log.add("j", now, self.plan.order, message.peer_id, self.plan.name)
        self.walker.last = now
        await self.move(now, now)
        self._reader = asyncio.create_task(self._read(ws))

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> proto.ServerMessage:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"{self.plan.name}: the server closed the connection ({msg.type})")
        return proto.decode_server(msg.data)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        order = self.plan.order
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: str = msg.data
            if data.startswith(POSITIONS_PREFIX):
                self.batches += 1
                self.batch_bytes += len(data)
                continue
            message = proto.decode_server(data)
            now = time.time()
            match message:
                case proto.Link():
                    self.links[message.peer_id] = message.offer
                    self.log.add("l", now, order, message.peer_id, message.offer)
                case proto.Unlink():
                    self.links.pop(message.peer_id, None)
                    self.log.add("u", now, order, message.peer_id)
                case proto.PeerLeft() if message.peer_id in self.links:
                    # The server tells nobody to unlink from a member who left.
                    del self.links[message.peer_id]
                    self.log.add("u", now, order, message.peer_id)
                case proto.Error():
                    self.errors.append(f"{message.code.value}: {message.message}")
        if not self.closing:
            self.dropped = True
            self.log.add("x", time.time(), order)

    async def move(self, now: float, due: float) -> None:
        """Tell the server where we stand, if we moved and ``due`` is a quarter second on."""
        position = self.walker.position
        ws = self.ws
        if position == self.sent or due - self.sent_at < UPDATE_INTERVAL - 1e-6 or ws is None:
            return
        if ws.closed:
            return
        self.sent, self.sent_at = position, due
        self.log.add("p", now, self.plan.order, *position)
        await ws.send_str(proto.encode(proto.Update(x=position[0], y=position[1])).decode())

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(proto.encode(proto.Leave()).decode())
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def walk_protocol_peers(peers: list[ProtocolPeer], until: float) -> None:
    """Walk every joined peer, each telling the server at most 4 times a second.

    Peers are spread over ``UPDATE_PHASES`` ticks a quarter second apart, so
    that their updates do not all arrive at once. Updates are due on the
    ticks' schedule, not when a late tick happens to run.
    """
    start = time.time()
    for k in itertools.count():
        due = start + k * UPDATE_INTERVAL / UPDATE_PHASES
        if due >= until:
            return
        await asyncio.sleep(max(0.0, due - time.time()))
        now = time.time()
        for peer in peers[k % UPDATE_PHASES :: UPDATE_PHASES]:
            if peer.peer_id is not None and not peer.dropped and peer.walker.step(now):
                await peer.move(now, due)


async def sample_rss_until(moment: float, samples: list[tuple[float, int]], origin: float) -> None:
    """Sample this process's memory every ``MEMORY_INTERVAL`` until ``moment``, and then."""
    while (remaining := moment - time.time()) > 0.1:
        samples.append((time.time() - origin, rss_bytes()))
        await asyncio.sleep(min(MEMORY_INTERVAL, remaining))
    await sleep_until(moment)
    samples.append((time.time() - origin, rss_bytes()))


def peer_rng(job: WalkJob, plan: PeerPlan) -> random.Random:
    """Each peer's own randomness: the same walk in every run with the same ``--seed``."""
    return random.Random(job.seed * 1_000_003 + plan.order)


async def signaling_worker_main(pipe: Pipe, job: WalkJob) -> None:
    pipe.send(("ready", None))
    timeline: Timeline = await recv_pipe(pipe)
    log = EventLog()
    peers: list[ProtocolPeer] = []

    def status() -> dict[str, Any]:
        joined = sum(1 for peer in peers if peer.peer_id is not None)
        return {"joined": joined, "links": sum(len(peer.links) for peer in peers)}

    reporting = asyncio.create_task(reporter(pipe, log, status))
    loop_errors = count_loop_errors()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        probing = (
            asyncio.create_task(probe(http, job.url, timeline.measure_end)) if job.probe else None
        )
        walking = asyncio.create_task(walk_protocol_peers(peers, timeline.measure_end))
        try:

            async def join(plan: PeerPlan) -> None:
                await sleep_until(timeline.start_of(plan))
                peer = ProtocolPeer(plan, Walker(peer_rng(job, plan), time.time()), log)
                peers.append(peer)
                await peer.join(http, job.url)

            await asyncio.gather(*(join(plan) for plan in job.peers))
            await sleep_until(timeline.measure_start)
            cpu_start = time.process_time()
            batches_start = sum(peer.batches for peer in peers)
            bytes_start = sum(peer.batch_bytes for peer in peers)
            rss_samples: list[tuple[float, int]] = []
            await sample_rss_until(timeline.measure_end, rss_samples, timeline.measure_start)
            cpu = time.process_time() - cpu_start
            seconds = timeline.measure_end - timeline.measure_start
            await walking
            errors = [f"{peer.plan.name}: {e}" for peer in peers for e in peer.errors]
            result = {
                "worker": job.worker,
                "cpu_percent": 100 * cpu / seconds,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "rss": rss_samples,
                "batches": sum(peer.batches for peer in peers) - batches_start,
                "batch_bytes": sum(peer.batch_bytes for peer in peers) - bytes_start,
                "errors": errors,
                "dropped": [peer.plan.name for peer in peers if peer.dropped],
                "probe": job.probe,
                "probe_ms": await probing if probing is not None else [],
                "loop_errors": loop_errors,
            }
        finally:
            for task in (reporting, walking, probing):
                if task is not None:
                    task.cancel()
            report(pipe, -1, log, status())
            await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
    pipe.send(("done", result))


#: What ``InlineAudioPath`` counts per stream, and what ``AudioIn`` counts besides.
RECEIVE_COUNTERS = ("received", "lost", "concealed", "recovered", "late")
LINK_COUNTERS = (*RECEIVE_COUNTERS, "frames", "silences", "gaps")


@dataclass
class LinkLife:
    """One link as its receiving end saw it, from ``link`` to ``unlink``: audio from ``sender``."""

    sender: str
    linked_at: float
    connected_at: float | None = None
    first_frame_at: float | None = None
    unlinked_at: float | None = None
    #: The current connection's receive path and reader: a failed link gets
    #: a new connection. Only while the link lasts: they hold the whole
    #: connection, which must be freed once closed.
    path: InlineAudioPath | None = None
    audio: AudioIn | None = None
    #: Connections made on this link, and what those no longer current counted.
    connections: int = 0
    done: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINK_COUNTERS, 0))

    def counters(self) -> dict[str, int]:
        totals = dict(self.done)
        if self.path is not None:
            for name in RECEIVE_COUNTERS:
                totals[name] += getattr(self.path, name)
        if self.audio is not None:
            totals["frames"] += self.audio.frames
            totals["silences"] += self.audio.silences
            totals["gaps"] += self.audio.gaps
        return totals

    def let_go(self) -> None:
        """Keep the current connection's counts, and nothing of the connection itself."""
        self.done = self.counters()
        self.path = self.audio = None


class ProximityPeer:
    """A mesh peer that walks, talks (in spurts, with ``--talk``) and keeps each link's record."""

    def __init__(self, job: WalkJob, plan: PeerPlan, log: EventLog) -> None:
        self.plan = plan
        self.log = log
        rng = peer_rng(job, plan)
        hz = 220.0 + 20.0 * plan.order
        self.voice: AudioSource = TalkSpurts(hz, rng) if job.talk else ToneSource(hz)
        self.audio = AudioOut(self.voice)
        self.peer = MeshPeer(
            plan.room, plan.name, SignalingOptions(urls=[job.url]), PeerOptions(), audio=self.audio
        )
        self.walker = Walker(rng, time.time())
        self.joined = False
        self.sent: tuple[float, float] | None = None
        self.lives: dict[str, LinkLife] = {}
        self.records: list[LinkLife] = []
        # After the mesh peer's own handlers, which pyee calls first.
        signaling = self.peer.signaling
        signaling.on("peer_list", self._on_peer_list)
        signaling.on("link", self._on_link)
        signaling.on("unlink", self._on_unlink)
        signaling.on("peer_left", self._on_peer_left)
        self.peer.on("audio", self._on_audio)
        self.peer.on("peerconnected", self._on_connected)

    async def start(self) -> None:
        # Said before joining, the position goes out with the join (SignalingClient._tell_again).
        self.sent = self.walker.position
        self.peer.move(*self.sent)
        await self.peer.start()

    def _on_peer_list(self, message: proto.PeerList) -> None:
        now = time.time()
        self.log.add("j", now, self.plan.order, message.peer_id, self.plan.name)
        if self.sent is not None:
            self.log.add("p", now, self.plan.order, *self.sent)
        self.walker.last = now
        self.joined = True

    def _on_link(self, message: proto.Link) -> None:
        now = time.time()
        self.log.add("l", now, self.plan.order, message.peer_id, message.offer)
        if message.peer_id not in self.lives:
            life = self.lives[message.peer_id] = LinkLife(message.peer_id, now)
            self.records.append(life)

    def _end(self, peer_id: str) -> None:
        now = time.time()
        self.log.add("u", now, self.plan.order, peer_id)
        life = self.lives.pop(peer_id, None)
        if life is not None:
            life.unlinked_at = now
            life.let_go()

    def _on_unlink(self, message: proto.Unlink) -> None:
        self._end(message.peer_id)

    def _on_peer_left(self, message: proto.PeerLeft) -> None:
        if message.peer_id in self.lives:
            self._end(message.peer_id)

    def _on_connected(self, peer_id: str) -> None:
        life = self.lives.get(peer_id)
        if life is not None and life.connected_at is None:
            life.connected_at = time.time()

    def _on_audio(self, peer_id: str, audio_in: AudioIn) -> None:
        life = self.lives.get(peer_id)
        link = self.peer.links.get(peer_id)
        if life is None or link is None:
            return
        life.let_go()
        life.path, life.audio = link.audio_path, audio_in
        life.connections += 1
        if life.first_frame_at is None:

            def first_frame(frame: Any) -> None:
                if life.first_frame_at is None:
                    life.first_frame_at = time.time()
                audio_in.on_frame = None

            audio_in.on_frame = first_frame

    def step(self, now: float) -> None:
        """Walk on; every link and the server hear of it (the mesh peer paces both)."""
        if not self.joined or not self.walker.step(now):
            return
        position = self.walker.position
        if position != self.sent:
            self.sent = position
            self.peer.move(*position)
            self.log.add("p", now, self.plan.order, *position)

    def connected_links(self) -> int:
        return sum(1 for link in self.peer.links.values() if link.connected)

    async def close(self) -> None:
        await self.peer.close()
        self.audio.stop()


async def walk_mesh_peers(peers: list[ProximityPeer], until: float) -> None:
    """Walk every joined peer at the position rate of the data channels."""
    while time.time() < until:
        now = time.time()
        for peer in peers:
            peer.step(now)
        await asyncio.sleep(1 / POSITION_RATE)


def life_row(
    peer: ProximityPeer,
    life: LinkLife,
    start: dict[int, dict[str, int]],
    end: dict[int, dict[str, int]],
) -> dict[str, Any]:
    """One directed link's record for the parent: times, and its counters in the window."""
    total = life.counters()
    # Made after the window: nothing in it.
    after = end.get(id(life), total)
    before = start.get(id(life), {}) if id(life) in end else after
    return {
        "receiver": peer.plan.order,
        "sender": life.sender,
        "linked_at": life.linked_at,
        "connected_at": life.connected_at,
        "first_frame_at": life.first_frame_at,
        "unlinked_at": life.unlinked_at,
        "connections": life.connections,
        "window": {name: value - before.get(name, 0) for name, value in after.items()},
        "total": total,
    }


async def proximity_worker_main(pipe: Pipe, job: WalkJob) -> None:
    pipe.send(("ready", None))
    timeline: Timeline = await recv_pipe(pipe)
    log = EventLog()
    peers: list[ProximityPeer] = []

    def status() -> dict[str, Any]:
        joined = sum(1 for peer in peers if peer.joined)
        return {"joined": joined, "links": sum(peer.connected_links() for peer in peers)}

    reporting = asyncio.create_task(reporter(pipe, log, status))
    walking = asyncio.create_task(walk_mesh_peers(peers, timeline.measure_end))
    loop_errors = count_loop_errors()
    try:

        async def start(plan: PeerPlan) -> None:
            await sleep_until(timeline.start_of(plan))
            peer = ProximityPeer(job, plan, log)
            peers.append(peer)
            await peer.start()

        await asyncio.gather(*(start(plan) for plan in job.peers))
        await sleep_until(timeline.measure_start)
        at_start = {id(life): life.counters() for peer in peers for life in peer.records}
        cpu_start = time.process_time()
        rss_samples: list[tuple[float, int]] = []
        await sample_rss_until(timeline.measure_end, rss_samples, timeline.measure_start)
        cpu = time.process_time() - cpu_start
        at_end = {id(life): life.counters() for peer in peers for life in peer.records}
        seconds = timeline.measure_end - timeline.measure_start
        await walking
        result = {
            "worker": job.worker,
            "cpu_percent": 100 * cpu / seconds,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss": rss_samples,
            "lives": [
                life_row(peer, life, at_start, at_end) for peer in peers for life in peer.records
            ],
            "voices": {
                peer.peer.peer_id: {
                    "switches": peer.voice.switches,
                    "frames": peer.voice.frames,
                    "spoken": peer.voice.spoken,
                }
                for peer in peers
                if isinstance(peer.voice, TalkSpurts)
            },
            "loop_errors": loop_errors,
        }
    finally:
        reporting.cancel()
        walking.cancel()
        report(pipe, -1, log, status())
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
    pipe.send(("done", result))


def walk_worker_process(pipe: Pipe, job: WalkJob) -> None:
    """Entry point of one worker process of --signaling-only or --proximity, or of the probe."""
    main = proximity_worker_main if job.proximity else signaling_worker_main
    run_client_process(pipe, f"worker {job.worker}", main(pipe, job))


def count_loop_errors() -> dict[str, int]:
    """Count what the event loop would log as unhandled, by kind, instead of printing it.

    With links made and closed many times a second, aiortc leaves a task
    failing now and then (a connection closed while it connects); they are
    reported in the results rather than flooding stderr.
    """
    counts: dict[str, int] = {}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        key = f"{context.get('message', '')}: {exc!r}" if exc else str(context.get("message"))
        counts[key] = counts.get(key, 0) + 1

    asyncio.get_running_loop().set_exception_handler(handler)
    return counts


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


def plan_timeline(args: argparse.Namespace, rejoins: int, after: float) -> Timeline:
    """The one timeline of every worker: joins from half a second on, settling, the
    measured window, then ``after`` seconds (for rejoins and leaving)."""
    epoch = time.time() + 0.5
    measure_start = epoch + args.peers * args.stagger + args.settle
    measure_end = measure_start + args.duration
    return Timeline(
        epoch=epoch,
        stagger=args.stagger,
        measure_start=measure_start,
        measure_end=measure_end,
        rejoins=rejoins,
        end=measure_end + after,
    )


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
        timeline = plan_timeline(args, args.rejoins, 1.0 + args.rejoins * REJOIN_INTERVAL + 1.0)
        measure_start, measure_end = timeline.measure_start, timeline.measure_end
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


# --- the parent of --signaling-only and --proximity -------------------------------------


@dataclass
class ServerWatch:
    """The server's CPU time and memory, sampled as the run goes: the window's first and last."""

    server: ServerProcess | None
    window: tuple[float, float]
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: This process's CPU time (the rule checker's) at the same moments.
    own: dict[str, float] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)
    _next_rss: float = 0.0

    def sample(self) -> None:
        now = time.time()
        if now >= self.window[0]:
            self.own.setdefault("start", time.process_time())
        if now >= self.window[1]:
            self.own.setdefault("end", time.process_time())
        if self.server is None:
            return
        self.server.check_alive()
        if now >= self.window[0] and "start" not in self.marks:
            self.marks["start"] = (now, self.server.cpu_seconds())
        if now >= self.window[1] and "end" not in self.marks:
            self.marks["end"] = (now, self.server.cpu_seconds())
        if self.window[0] <= now < self.window[1] and now >= self._next_rss:
            self.rss.append(self.server.rss_bytes())
            self._next_rss = now + 1.0

    def peak_rss(self) -> int | None:
        """The server's high-water mark of resident memory (VmHWM), since it started."""
        if self.server is None:
            return None
        with open(f"/proc/{self.server.popen.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None


def run_walk(args: argparse.Namespace, url: str, server: ServerProcess | None) -> dict[str, Any]:
    """Run --signaling-only or --proximity: start, join, walk, check the rule, measure."""
    plans = plan_peers(args)
    jobs = [
        WalkJob(
            worker=w,
            url=url,
            peers=[plan for plan in plans if plan.order % args.procs == w],
            seed=args.seed,
            talk=args.talk,
            probe=False,
            proximity=args.proximity,
        )
        for w in range(args.procs)
    ]
    jobs.append(WalkJob(args.procs, url, [], args.seed, False, probe=True, proximity=False))
    rules = LinkRules(full_mesh_up_to=args.full_mesh_up_to, max_links=args.max_links)
    progress = Progress()
    progress.show("starting workers")
    workers = Workers.start(walk_worker_process, jobs)
    try:
        workers.gather("ready", time.monotonic() + STARTUP_DEADLINE)
        timeline = plan_timeline(args, 0, 1.0)
        measure_start, measure_end = timeline.measure_start, timeline.measure_end
        workers.send(timeline)
        checker = RuleChecker(
            len(plans),
            rules,
            args.tolerance,
            (measure_start, measure_end),
            reference=args.proximity,
        )
        watch = ServerWatch(server, (measure_start, measure_end))
        seen = [-2] * len(jobs)
        as_of = [0.0] * len(jobs)

        def on_progress(reports: list[Any]) -> None:
            for w, report in enumerate(reports):
                if report and report["seq"] != seen[w]:
                    seen[w] = report["seq"]
                    as_of[w] = report["as_of"]
                    checker.feed([e for e in report["events"] if e[1] < measure_end or e[0] == "j"])
            checker.advance(min(min(as_of) - CHECK_LAG, measure_end))
            watch.sample()
            now = time.time()
            joined = sum(r["joined"] for r in reports if r)
            links = sum(r["links"] for r in reports if r)
            phase = (
                "joining" if now < measure_start else "measuring" if now < measure_end else "ending"
            )
            remaining = max(0.0, (measure_end if now < measure_end else timeline.end) - now)
            violations = sum(checker.counts.values())
            progress.show(
                phase,
                f"{joined}/{args.peers} peers, {links} link ends, "
                f"{violations} violations, {remaining:.0f} s to go",
            )

        results = workers.gather(
            "done",
            time.monotonic() + (timeline.end - time.time()) + SHUTDOWN_DEADLINE,
            on_progress,
            watch.sample,
        )
        watch.sample()
    finally:
        workers.stop()
    checker.advance(measure_end)
    summary = summarize_walk(args, checker, results, watch)
    progress.done("done")
    return {
        "summary": summary,
        "violations": [dataclasses.asdict(v) for v in checker.violations],
        "workers": results,
    }


def merged_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for each in counts:
        for key, n in each.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def stats(values: list[float]) -> dict[str, Any]:
    """p50, p95, max and count of some values."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.5),
        "p95": percentile(ordered, 0.95),
        "max": ordered[-1] if ordered else math.nan,
        "count": len(ordered),
    }


def summarize_walk(
    args: argparse.Namespace,
    checker: RuleChecker,
    results: list[dict[str, Any]],
    watch: ServerWatch,
) -> dict[str, Any]:
    start, end = checker.window
    minutes = (end - start) / 60
    summary: dict[str, Any] = {
        "mode": "signaling-only" if args.signaling_only else "proximity",
        "peers": args.peers,
        "joined": len(checker.ids),
        "rules": dataclasses.asdict(checker.rules),
        "tolerance": checker.tolerance,
        "violations": dict(checker.counts),
        "conditions": {kind: stats(times) for kind, times in sorted(checker.episodes.items())},
        "violations_total": sum(checker.counts.values()),
        "unknown_peers": checker.unknown_peers,
        "links_mean": checker.degree_sum / checker.degree_count if checker.degree_count else 0.0,
        "links_max": checker.max_links,
        "links_max_momentary": checker.max_links_momentary,
        "momentary_over_k": checker.momentary_over_k,
        "over_k_ms": {
            "p50": 1000 * percentile(sorted(checker.over_k_seconds), 0.5),
            "max": 1000 * max(checker.over_k_seconds, default=math.nan),
        },
        "window_start": start,
        "links_histogram": dict(sorted(checker.links_histogram.items())),
        "setups_per_minute": len(checker.setups) / minutes,
        "teardowns_per_minute": checker.teardowns / minutes,
        "updates_per_second": len(checker.update_times) / (end - start),
        "links_per_second": checker.links_directives / (end - start),
        "unlinks_per_second": checker.unlink_directives / (end - start),
        "processes": [
            {
                "worker": r["worker"],
                "cpu_percent": r["cpu_percent"],
                "peak_rss": r["peak_rss"],
                "rss_growth_mb_per_min": rss_growth(r["rss"]),
            }
            for r in results
            if not r.get("probe")
        ],
        "loop_errors": merged_counts(r["loop_errors"] for r in results),
    }
    if "start" in watch.own and "end" in watch.own:
        summary["checker_cpu_percent"] = (
            100 * (watch.own["end"] - watch.own["start"]) / (end - start)
        )
    if "start" in watch.marks and "end" in watch.marks:
        (t0, cpu0), (t1, cpu1) = watch.marks["start"], watch.marks["end"]
        spent = cpu1 - cpu0
        updates = checker.count_between(checker.update_times, t0, t1)
        directives = checker.count_between(checker.directive_times, t0, t1)
        summary["server"] = {
            "cpu_percent": 100 * spent / (t1 - t0),
            "cpu_us_per_update": 1e6 * spent / updates if updates else math.nan,
            "cpu_us_per_directive": 1e6 * spent / directives if directives else math.nan,
            "rss": watch.rss[-1] if watch.rss else None,
            "peak_rss": watch.peak_rss(),
        }
    probe_ms = sorted(ms for r in results for t, ms in r.get("probe_ms", []) if start <= t < end)
    summary["probe_ms"] = {
        "p50": percentile(probe_ms, 0.5),
        "p99": percentile(probe_ms, 0.99),
        "max": probe_ms[-1] if probe_ms else math.nan,
        "count": len(probe_ms),
    }
    if args.signaling_only:
        seconds = end - start
        summary["positions_batches_per_peer_per_second"] = (
            sum(r["batches"] for r in results) / seconds / args.peers
        )
        summary["positions_mb_per_second"] = sum(r["batch_bytes"] for r in results) / seconds / 1e6
        summary["errors"] = [e for r in results for e in r["errors"]]
        summary["dropped"] = [name for r in results for name in r["dropped"]]
    else:
        summary.update(summarize_audio(args, checker, results))
    return summary


def summarize_audio(
    args: argparse.Namespace, checker: RuleChecker, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """--proximity: from coming into range to audio, and the audio delivered on each link."""
    start, end = checker.window
    voices: dict[str, Any] = {}
    for r in results:
        voices.update(r.get("voices", {}))
    setups: dict[tuple[int, int], list[Setup]] = {}
    for setup in checker.setups:
        setups.setdefault((min(setup.a, setup.b), max(setup.a, setup.b)), []).append(setup)
    #: Seconds from each start (coming into range, the rule wanting the link,
    #: the link directive) to each end (the directive, connected, first audio).
    delays: dict[str, list[float]] = {}
    waited = 0
    never_connected = 0
    lives = [life for r in results for life in r.get("lives", [])]
    for life in lives:
        until = life["unlinked_at"] or end
        if life["connected_at"] is None and until - life["linked_at"] > CONNECT_DEADLINE:
            never_connected += 1
        if not start <= life["linked_at"] < end:
            continue
        a, b = life["receiver"], checker.ids.get(life["sender"])
        if b is None:
            continue
        found = [
            s
            for s in setups.get((min(a, b), max(a, b)), [])
            if s.at <= life["linked_at"] + 1e-6 and life["linked_at"] - s.at < CONNECT_DEADLINE
        ]
        if not found:
            continue
        setup = found[-1]
        voice = voices.get(life["sender"])
        # With talk-spurts, a sender in a pause sends nothing: the first frame
        # times the link only when the sender was talking as it connected.
        talking = voice is None or (
            life["connected_at"] is not None and talking_at(voice["switches"], life["connected_at"])
        )
        starts = {"link": life["linked_at"], "wanted": setup.wanted}
        if not math.isnan(setup.entered):
            if setup.had_room:
                starts["range"] = setup.entered
            else:
                # One end was at K since they came near: the link waited for a free slot.
                waited += 1
        ends = {"link": life["linked_at"], "connected": life["connected_at"]}
        if life["first_frame_at"] is not None:
            ends["audio_all"] = life["first_frame_at"]
            if talking:
                ends["audio"] = life["first_frame_at"]
        for start_name, began in starts.items():
            for end_name, ended in ends.items():
                if ended is not None and not math.isnan(began) and start_name != end_name:
                    delays.setdefault(f"{start_name}_to_{end_name}", []).append(ended - began)
    ratios: list[float] = []
    small = 0
    totals = dict.fromkeys(LINK_COUNTERS, 0)
    for life in lives:
        window = life["window"]
        for name in totals:
            totals[name] += window[name]
        count = window["received"] + window["lost"]
        if count >= MIN_LINK_FRAMES:
            ratios.append(window["received"] / count)
        elif count:
            small += 1
    ratios.sort()
    sent = totals["received"] + totals["lost"]
    spoken = [v["spoken"] / v["frames"] for v in voices.values() if v["frames"]]
    names = [f"{a}_to_{b}" for a in ("range", "wanted") for b in ("link", "connected")]
    names += [f"{a}_to_{b}" for a in ("range", "wanted", "link") for b in ("audio", "audio_all")]
    names.append("link_to_connected")
    return {
        "delays": {name: stats(delays.get(name, [])) for name in names},
        "waited_for_a_slot": waited,
        "never_connected": never_connected,
        "audio_links": len(ratios),
        "audio_links_small": small,
        "audio_min": ratios[0] if ratios else math.nan,
        "audio_median": statistics.median(ratios) if ratios else math.nan,
        "audio_links_below_99": sum(1 for r in ratios if r < 0.99),
        "audio_delivered": totals["received"] / sent if sent else math.nan,
        "audio_totals": totals,
        "talk_share": statistics.fmean(spoken) if spoken else None,
    }


def _p(s: dict[str, Any], unit: str = "s", scale: float = 1.0) -> str:
    return f"p50 {s['p50'] * scale:.2f} {unit}  p95 {s['p95'] * scale:.2f} {unit}"


def walk_table(args: argparse.Namespace, summary: dict[str, Any], shown: list[Any]) -> str:
    s = summary
    rules = s["rules"]
    mode = "signaling only (no media)" if args.signaling_only else "proximity, aiortc peers"
    if args.proximity:
        mode += ", talk-spurts" if args.talk else ", steady tones"
    lines = [
        f"Load test: {args.peers} peers walking one room, {mode}, {args.procs} client "
        f"process(es), {args.duration:g} s measured",
        f"  rule                   full mesh up to {rules['full_mesh_up_to']}, "
        f"K {rules['max_links']}, "
        f"link {rules['link_range']:g} m, unlink {rules['unlink_range']:g} m after "
        f"{rules['hysteresis']:g} s; checked with {s['tolerance']:g} s tolerance",
    ]
    counts = s["violations"]
    listed = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
    lines.append(
        f"  rule violations        {s['violations_total']}" + (f" ({listed})" if listed else "")
    )
    if not s["conditions"]:
        lines.append("    (none of the conditions was seen at any tick of the checker)")
    for kind, c in s["conditions"].items():
        lines.append(
            f"    {kind + ' spells':<21}{c['count']}, p50 {c['p50']:.2f} s  max {c['max']:.2f} s  "
            "(ended within what is allowed)"
        )
    lines += [
        f"  links per peer         mean {s['links_mean']:.2f}  max {s['links_max']} at the "
        f"checker's ticks, {s['links_max_momentary']} for a moment",
        f"  beyond K for a moment  {s['momentary_over_k']} times, "
        f"p50 {s['over_k_ms']['p50']:.1f} ms max {s['over_k_ms']['max']:.1f} ms",
        f"  link changes           {s['setups_per_minute']:.0f} set-ups/min  "
        f"{s['teardowns_per_minute']:.0f} tear-downs/min  "
        f"(each peer: {2 * s['setups_per_minute'] / args.peers:.1f} new links/min)",
        f"  position updates       {s['updates_per_second']:.0f}/s sent  "
        f"(directives {s['links_per_second']:.1f} link/s, {s['unlinks_per_second']:.1f} unlink/s)",
    ]
    if args.signaling_only:
        lines.append(
            f"  positions batches      "
            f"{s['positions_batches_per_peer_per_second']:.2f}/s per peer, "
            f"{s['positions_mb_per_second']:.1f} MB/s to all"
        )
    else:
        delays = s["delays"]

        def delay(name: str, what: str) -> str:
            d = delays[name]
            return f"    {what:<21}{_p(d)}  ({d['count']})"

        lines += [
            "  time to audio, from   (first decoded frame, on links whose sender was talking)",
            delay("range_to_audio", "coming in range"),
            delay("wanted_to_audio", "the rule wanting it"),
            delay("link_to_audio", "the link directive"),
            "  more delays",
            delay("range_to_link", "in range -> link"),
            delay("wanted_to_link", "wanted -> link"),
            delay("link_to_connected", "link -> connected"),
            delay("range_to_audio_all", "in range -> audio *"),
            delay("wanted_to_audio_all", "wanted -> audio *"),
            f"    (* every link, with the wait for its sender to speak; "
            f"{s['waited_for_a_slot']} links came in range while an end was at K)",
            f"  audio frames           min {100 * s['audio_min']:.1f}%  "
            f"median {100 * s['audio_median']:.1f}%  overall {100 * s['audio_delivered']:.2f}% "
            f"on {s['audio_links']} directed links; {s['audio_links_below_99']} below 99%",
            f"    counted              {s['audio_totals']['received']} received, "
            f"{s['audio_totals']['lost']} lost ({s['audio_totals']['concealed']} concealed, "
            f"{s['audio_totals']['recovered']} recovered by FEC), "
            f"{s['audio_totals']['late']} late; "
            f"{s['audio_links_small']} links under {MIN_LINK_FRAMES} frames left out",
        ]
        if s["talk_share"] is not None:
            lines.append(f"  talking                {100 * s['talk_share']:.0f}% of the time")
        if s["never_connected"]:
            lines.append(f"  never connected        {s['never_connected']} link ends")
    probe = s["probe_ms"]
    lines.append(
        f"  server ping            p50 {probe['p50']:.1f} ms  p99 {probe['p99']:.1f} ms  "
        f"max {probe['max']:.1f} ms  ({probe['count']} pings)"
    )
    for proc in s["processes"]:
        lines.append(
            f"  client process {proc['worker']}       CPU {proc['cpu_percent']:.0f}%  "
            f"peak RSS {proc['peak_rss'] / 1e6:.0f} MB  "
            f"growth {proc['rss_growth_mb_per_min']:+.1f} MB/min"
        )
    for error, n in s["loop_errors"].items():
        lines.append(f"  unhandled in a loop    {n} x {error}")
    if "checker_cpu_percent" in s:
        lines.append(f"  rule checker           CPU {s['checker_cpu_percent']:.0f}% (this process)")
    server = s.get("server")
    if server is not None:
        rss = "-" if server["rss"] is None else f"{server['rss'] / 1e6:.0f} MB"
        peak = "-" if server["peak_rss"] is None else f"{server['peak_rss'] / 1e6:.0f} MB"
        lines.append(
            f"  server                 CPU {server['cpu_percent']:.1f}%  "
            f"{server['cpu_us_per_update']:.0f} us per position update, "
            f"{server['cpu_us_per_directive']:.0f} us per directive (all its CPU over each); "
            f"RSS {rss}, peak {peak}"
        )
    if shown:
        lines.append("  violations (first ones):")
        for v in shown:
            lines.append(
                f"    {v.kind:<10} at {v.found - s['window_start']:+7.2f} s, for "
                f"{v.found - v.since:.2f} s: {' '.join(v.peers)}: {v.detail}"
            )
    return "\n".join(lines)


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
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--signaling-only",
        action="store_true",
        help="protocol-level peers with no media walk one room; check every link directive "
        "against the rule and measure the server",
    )
    modes.add_argument(
        "--proximity",
        action="store_true",
        help="aiortc peers walk one room, linked by proximity; check the rule, time coming "
        "into range to audio, count audio frames per link",
    )
    parser.add_argument("--room", default="loadtest", help="room name (default: loadtest)")
    parser.add_argument("--peers", type=positive_int, default=10, metavar="N")
    parser.add_argument(
        "--rooms", type=positive_int, default=1, metavar="R", help="full-mesh test only"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=30.0, metavar="T", help="seconds measured"
    )
    parser.add_argument(
        "--procs",
        type=positive_int,
        metavar="P",
        help="client processes (default: 1 with --signaling-only, else the number of cores)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument(
        "--naive", action="store_true", help="encode per sender, as plain aiortc does"
    )
    parser.add_argument(
        "--stagger",
        type=float,
        metavar="S",
        help="seconds between joins (default: 0.02 with --signaling-only, else 0.2)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds after the last join before measuring (default: 5)",
    )
    parser.add_argument(
        "--rejoins",
        type=int,
        default=5,
        metavar="K",
        help="full-mesh test: times the last peer of the first room leaves and joins again "
        "(default: 5)",
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
    walking = parser.add_argument_group("--signaling-only and --proximity")
    walking.add_argument(
        "--talk",
        action="store_true",
        help=f"--proximity: speak in talk-spurts (about {TALK_MEAN:g} s of tone, then "
        f"{PAUSE_IN_SPEECH_MEAN:g} s of silence, not sent with DTX) instead of a steady tone",
    )
    walking.add_argument(
        "--full-mesh-up-to",
        type=positive_int,
        default=LinkRules.full_mesh_up_to,
        metavar="N",
        help="the server's rule (given to the server started here; with --server, say "
        "what it was given): rooms of up to N are a full mesh (default: %(default)s)",
    )
    walking.add_argument(
        "--max-links",
        type=positive_int,
        default=LinkRules.max_links,
        metavar="K",
        help="the server's rule, likewise: at most K links per peer (default: %(default)s)",
    )
    walking.add_argument(
        "--tolerance",
        type=positive_float,
        default=DEFAULT_TOLERANCE,
        metavar="S",
        help="seconds a directive may lag the rule: its tick, the positions batch and "
        "delivery (default: %(default)g)",
    )
    walking.add_argument(
        "--seed", type=int, default=13, metavar="N", help="seed of the walks (default: 13)"
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that make no sense, and fill in the defaults that depend on the mode."""
    walking = args.signaling_only or args.proximity
    if args.talk and not args.proximity:
        parser.error("--talk needs --proximity")
    if walking:
        if args.rooms != 1:
            parser.error("--signaling-only and --proximity walk one room: leave out --rooms")
        if args.naive or args.aiortc_receive:
            parser.error(
                "--naive and --aiortc-receive are for the full-mesh test; --proximity counts "
                "loss on the inline receive path"
            )
        if args.server is None and args.peers > MAX_ROOM_SIZE:
            parser.error(
                f"--peers: a room holds at most {MAX_ROOM_SIZE} people (the server's limit)"
            )
    if args.procs is None:
        args.procs = 1 if args.signaling_only else os.cpu_count() or 1
    args.procs = min(args.procs, args.peers)
    if args.stagger is None:
        args.stagger = 0.02 if args.signaling_only else 0.2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    walking = args.signaling_only or args.proximity
    with contextlib.ExitStack() as stack:
        server: ServerProcess | None = None
        if args.server:
            url = args.server
            server_cpu: Any = lambda: 0.0  # noqa: E731 - nothing to measure
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            # The full-mesh test measures a mesh: every room is one, whatever its size.
            mesh_up_to = args.full_mesh_up_to if walking else max(args.peers, 10)
            process = start_chatsubo(
                sys.executable,
                workdir,
                uvloop=True,
                messages_per_second=200,
                max_room_size=max(10, args.peers),
                extra_args=[
                    "--full-mesh-up-to",
                    str(mesh_up_to),
                    "--max-links",
                    str(args.max_links),
                ],
            )
            server = stack.enter_context(running(process))
            url = f"http://127.0.0.1:{server.port}"
            server_cpu = server.cpu_seconds
        try:
            report = run_walk(args, url, server) if walking else run(args, url, server_cpu)
        except RuntimeError as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
            return 2
    report["machine"] = machine()
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = report["summary"]
    if walking:
        return finish_walk(args, report)
    print(table(args, summary))
    if args.json:
        args.json.write_text(json.dumps(_jsonable(report), indent=1))
    ok = summary["pairs_connected"] == summary["pairs_expected"] and summary["rejoin_failed"] == 0
    if not ok:
        print("loadtest: some links did not connect", file=sys.stderr)
    return 0 if ok else 1


#: Violations listed in the table; all of them are in the JSON.
VIOLATIONS_SHOWN = 20


def finish_walk(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Print the table and write the JSON of --signaling-only or --proximity; the exit code."""
    summary = report["summary"]
    shown = [Violation(**v) for v in report["violations"][:VIOLATIONS_SHOWN]]
    print(walk_table(args, summary, shown))
    if args.json:
        args.json.write_text(json.dumps(_jsonable(report), indent=1))
    problems = [
        f"{n} {kind} violations: {VIOLATIONS[kind]}"
        for kind, n in summary["violations"].items()
        if n
    ]
    if summary["unknown_peers"]:
        problems.append(f"{summary['unknown_peers']} directives named a peer nobody joined as")
    if summary["joined"] < args.peers:
        problems.append(f"only {summary['joined']} of {args.peers} peers joined")
    if summary.get("dropped"):
        problems.append(f"{len(summary['dropped'])} peers lost their connection to the server")
    if summary.get("errors"):
        problems.append(
            f"the server sent {len(summary['errors'])} errors, e.g. {summary['errors'][0]}"
        )
    if summary.get("never_connected"):
        problems.append(f"{summary['never_connected']} link ends never connected")
    for problem in problems:
        print(f"loadtest: {problem}", file=sys.stderr)
    return 1 if problems else 0


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
