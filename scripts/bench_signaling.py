"""Benchmarks for the Chatsubo signaling server, with peerjs-server as the yardstick.

relay  P pairs of clients ping-pong SDP-sized signals: A sends to B, B answers A
       on receipt, again and again. Chatsubo and peerjs-server (npm ``peer``)
       take the same workload one after the other, alternating over rounds.
       Reported: relayed messages a second, round-trip p50/p99, and the
       server's own CPU time per relayed message over the measurement window.
join   join-to-``peer_list`` latency while rooms fill up (Chatsubo only:
       peerjs-server has no rooms).
idle   Chatsubo's resident memory with N idle WebSockets open.

Each server is its own subprocess on 127.0.0.1. The clients spread over several
processes, because on a two-core machine one Python client process saturates
before either server does. Run it from anywhere, with the project's venv:

    .venv/bin/python scripts/bench_signaling.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import msgspec
from benchkit import (
    HOST,
    SETUP_DEADLINE,
    Progress,
    ServerProcess,
    Workers,
    free_port,
    machine_busy_seconds,
    percentile,
    process_cpu_seconds,
    recv_pipe,
    run_client_process,
    run_loop,
    running,
    split,
    start_chatsubo,
    wait_until,
)

from chatsubo.commandline import positive_float, positive_int, raise_file_limit

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    Pipe = Connection[Any, Any]
    ClientWS = aiohttp.ClientWebSocketResponse[Literal[False]]

REPO = Path(__file__).resolve().parent.parent
PEERJS_VERSION = "1.0.2"
DEFAULT_PEERJS_DIR = Path.home() / ".cache" / "chatsubo-bench" / "peerjs"
BENCHMARKS = ("relay", "join", "idle")
RELAY_SERVERS = ("chatsubo", "chatsubo-asyncio", "peerjs")
SERVER_LABELS = {
    "chatsubo": "chatsubo (uvloop)",
    "chatsubo-asyncio": "chatsubo (asyncio loop)",
    "peerjs": f"peerjs-server {PEERJS_VERSION}",
}


# --- small helpers ---------------------------------------------------------------


# --- servers ---------------------------------------------------------------------


def ensure_peerjs(directory: Path, npm: str) -> Path:
    """The peerjs-server entry script, installing ``peer`` with npm on first use."""
    package = directory / "node_modules" / "peer"
    manifest = package / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text())["version"] == PEERJS_VERSION:
        return package / "dist" / "bin" / "peerjs.js"
    if shutil.which(npm) is None:
        raise RuntimeError(f"{npm} not found: it installs peerjs-server (npm package 'peer')")
    print(f"installing peer@{PEERJS_VERSION} into {directory} with npm", file=sys.stderr)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "package.json").exists():
        (directory / "package.json").write_text('{"private": true}\n')
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"peer@{PEERJS_VERSION}"],
        cwd=directory,
        check=True,
        stdout=sys.stderr,
    )
    return package / "dist" / "bin" / "peerjs.js"


def start_peerjs(node: str, entry: Path, workdir: Path) -> ServerProcess:
    """Start peerjs-server's own command line on a free loopback port (WebSocket at /peerjs)."""
    port = free_port()
    log = workdir / f"peerjs-{port}.log"
    cmd = [node, str(entry), "--host", HOST, "--port", str(port), "--path", "/"]
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd, cwd=entry.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return ServerProcess(SERVER_LABELS["peerjs"], popen, port, log)


# --- the two wire formats ----------------------------------------------------------


def make_sdp(chars: int) -> str:
    """An audio-only SDP offer of about ``chars`` characters, as a browser would write it."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 5d2f1c1e-7a58-4b8e-9a43-2c0d3e0b6a11",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Xk2b",
        "a=ice-pwd:9sZkq2Zb5Q3bLx0QhR1fB6dE",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(f"{i * 7 % 256:02X}" for i in range(32)),
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1001 cname:bench",
    ]
    n = 0
    while sum(len(line) + 2 for line in lines) < chars:
        n += 1
        lines.append(
            f"a=candidate:{n} 1 udp 2122260223 192.168.1.{n % 250 + 2} {50000 + n} typ host "
            "generation 0 network-id 1"
        )
    return "\r\n".join(lines) + "\r\n"


class _Payload(msgspec.Struct):
    type: str
    seq: int


class _ChatsuboSignal(msgspec.Struct):
    type: str
    from_: str = msgspec.field(name="from")
    data: _Payload | None = None


class _PeerjsSignal(msgspec.Struct):
    type: str
    src: str = ""
    payload: _Payload | None = None


class Wire:
    """How one server wants a signal sent, and how it delivers one.

    The payload is ``{"type": "offer"|"answer", "seq": N, "sdp": ...}`` for both
    servers; the receiver checks sender, kind and sequence number, and skips the
    SDP without building a string for it.
    """

    server: str

    def __init__(self, signal_bytes: int) -> None:
        self._sdp = msgspec.json.encode(make_sdp(signal_bytes - 120))

    def url(self, port: int, client_id: str) -> str:
        """The WebSocket URL of one client."""
        raise NotImplementedError

    def frame(self, kind: Literal["offer", "answer"], dst: str, seq: int) -> bytes:
        """One encoded signal for ``dst``."""
        raise NotImplementedError

    def seq_of(self, frame: bytes, kind: str, src: str) -> int | None:
        """The sequence number of a relayed signal of ``kind`` from ``src``; None otherwise."""
        raise NotImplementedError


class ChatsuboWire(Wire):
    """Chatsubo: ``signal`` with ``to`` in, ``signal`` with ``from`` out."""

    server = "chatsubo"
    _decoder = msgspec.json.Decoder(_ChatsuboSignal)

    def url(self, port: int, client_id: str) -> str:
        return f"ws://{HOST}:{port}/ws"

    def frame(self, kind: Literal["offer", "answer"], dst: str, seq: int) -> bytes:
        return b'{"type":"signal","to":"%s","data":{"type":"%s","seq":%d,"sdp":%s}}' % (
            dst.encode(),
            kind.encode(),
            seq,
            self._sdp,
        )

    def seq_of(self, frame: bytes, kind: str, src: str) -> int | None:
        try:
            msg = self._decoder.decode(frame)
        except msgspec.DecodeError:
            return None
        if msg.type != "signal" or msg.from_ != src or msg.data is None:
            return None
        return msg.data.seq if msg.data.type == kind else None


class PeerjsWire(Wire):
    """peerjs-server: ``OFFER``/``ANSWER`` with ``dst`` in; the server adds ``src``."""

    server = "peerjs"
    _decoder = msgspec.json.Decoder(_PeerjsSignal)

    def url(self, port: int, client_id: str) -> str:
        token = secrets.token_hex(8)
        return f"ws://{HOST}:{port}/peerjs?key=peerjs&id={client_id}&token={token}"

    def frame(self, kind: Literal["offer", "answer"], dst: str, seq: int) -> bytes:
        return b'{"type":"%s","dst":"%s","payload":{"type":"%s","seq":%d,"sdp":%s}}' % (
            kind.upper().encode(),
            dst.encode(),
            kind.encode(),
            seq,
            self._sdp,
        )

    def seq_of(self, frame: bytes, kind: str, src: str) -> int | None:
        try:
            msg = self._decoder.decode(frame)
        except msgspec.DecodeError:
            return None
        if msg.type != kind.upper() or msg.src != src or msg.payload is None:
            return None
        return msg.payload.seq if msg.payload.type == kind else None


def signal_size(args: argparse.Namespace) -> int:
    """Bytes in one signal frame as a Chatsubo client sends it, for the record."""
    return len(ChatsuboWire(args.signal_bytes).frame("offer", "x" * 22, 100000))


def make_wire(server: str, signal_bytes: int) -> Wire:
    """The wire format of ``server`` (a key of ``SERVER_LABELS``)."""
    return PeerjsWire(signal_bytes) if server == "peerjs" else ChatsuboWire(signal_bytes)


async def next_json(ws: ClientWS, timeout: float = 10.0) -> dict[str, Any]:
    """The next text frame as a dict; anything else is an error."""
    msg = await ws.receive(timeout=timeout)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise ConnectionError(f"expected a text frame, got {msg.type.name} {msg.data!r}")
    decoded: dict[str, Any] = msgspec.json.decode(msg.data)
    return decoded


async def expect(ws: ClientWS, type_: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next message, which must be of ``type_``."""
    message = await next_json(ws, timeout)
    if message.get("type") != type_:
        raise RuntimeError(f"expected {type_}, got {message}")
    return message


async def connect(
    session: aiohttp.ClientSession, wire: Wire, port: int, client_id: str
) -> tuple[ClientWS, str]:
    """Open one client and wait for its greeting; returns the socket and the peer id."""
    ws = await session.ws_connect(wire.url(port, client_id), decode_text=False)
    if wire.server == "peerjs":
        await expect(ws, "OPEN")
        return ws, client_id
    welcome = await expect(ws, "welcome")
    return ws, str(welcome["peerId"])


async def join(ws: ClientWS, room: str, name: str) -> dict[str, Any]:
    """Join a Chatsubo room; the ``peer_list`` answer."""
    await ws.send_frame(
        msgspec.json.encode({"type": "join", "roomId": room, "name": name}), aiohttp.WSMsgType.TEXT
    )
    while True:
        message = await next_json(ws)
        if message["type"] == "peer_list":
            return message
        if message["type"] == "error":
            raise RuntimeError(f"join {room} failed: {message}")


async def bounded(tasks: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    """Run the task factories with at most ``concurrency`` at once, keeping order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(make: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await make()

    return await asyncio.gather(*(one(make) for make in tasks))


# --- relay ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayJob:
    """What one relay client process does."""

    server: str
    port: int
    worker: int
    pairs: int
    signal_bytes: int
    tag: str


@dataclass
class RelayCounts:
    """What one relay client process saw inside the measurement window."""

    received: int = 0
    rtts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Pair:
    a: ClientWS
    a_id: str
    b: ClientWS
    b_id: str


async def _open_pair(session: aiohttp.ClientSession, wire: Wire, job: RelayJob, i: int) -> _Pair:
    name = f"{job.tag}-{job.worker}-{i}"
    a, a_id = await connect(session, wire, job.port, f"{name}-a")
    b, b_id = await connect(session, wire, job.port, f"{name}-b")
    if wire.server != "peerjs":
        await join(a, name, "A")
        await join(b, name, "B")
        await expect(a, "peer_joined")
    return _Pair(a, a_id, b, b_id)


async def _initiate(
    pair: _Pair, wire: Wire, window: tuple[float, float], counts: RelayCounts
) -> None:
    """A: send an offer, wait for its answer, record the round trip; until the window ends."""
    start, end = window
    # Local names: this loop is the clients' hot path, and the clients must outrun the server.
    send, receive, clock, text = (
        pair.a.send_frame,
        pair.a.receive,
        time.monotonic,
        aiohttp.WSMsgType.TEXT,
    )
    seq = 0
    while (sent := clock()) < end:
        await send(wire.frame("offer", pair.b_id, seq), text)
        msg = await receive()
        now = clock()
        if msg.type is not text or wire.seq_of(msg.data, "answer", pair.b_id) != seq:
            counts.errors.append(f"A expected answer {seq}, got {msg.type.name} {msg.data!r:.200}")
            return
        if start <= now < end:
            counts.received += 1
            counts.rtts.append(now - sent)
        seq += 1


async def _respond(
    pair: _Pair, wire: Wire, window: tuple[float, float], counts: RelayCounts
) -> None:
    """B: answer every offer at once, until the socket closes or the task is cancelled."""
    start, end = window
    send, receive, clock, text = (  # local names, as in _initiate
        pair.b.send_frame,
        pair.b.receive,
        time.monotonic,
        aiohttp.WSMsgType.TEXT,
    )
    while True:
        msg = await receive()
        if msg.type is not text:
            return
        seq = wire.seq_of(msg.data, "offer", pair.a_id)
        if seq is None:
            counts.errors.append(f"B expected an offer, got {msg.data!r:.200}")
            await pair.a.close()  # so that A stops waiting for an answer
            return
        if start <= clock() < end:
            counts.received += 1
        await send(wire.frame("answer", pair.a_id, seq), text)


async def _relay_client(pipe: Pipe, job: RelayJob) -> None:
    wire = make_wire(job.server, job.signal_bytes)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        pairs: list[_Pair] = await bounded(
            [partial(_open_pair, session, wire, job, i) for i in range(job.pairs)], 16
        )
        pipe.send(("ready", len(pairs)))
        _, start, end = await recv_pipe(pipe)
        counts = RelayCounts()
        window = (start, end)
        responders = [asyncio.create_task(_respond(p, wire, window, counts)) for p in pairs]
        try:
            async with asyncio.timeout(end - time.monotonic() + 20):
                await asyncio.gather(*(_initiate(p, wire, window, counts) for p in pairs))
        except TimeoutError:
            counts.errors.append("answers still missing 20 s after the window closed")
        for task in responders:
            task.cancel()
        await asyncio.gather(*responders, return_exceptions=True)
        await asyncio.gather(
            *(ws.close() for p in pairs for ws in (p.a, p.b)), return_exceptions=True
        )
    pipe.send(("done", counts))


def relay_client_process(pipe: Pipe, job: RelayJob) -> None:
    """Entry point of one relay client process."""
    run_client_process(pipe, f"relay client {job.worker}", _relay_client(pipe, job))


@dataclass
class RelayResult:
    """One server's relay run."""

    server: str
    label: str
    round: int
    pairs: int
    window_s: float
    relayed: int
    msgs_per_s: float
    rtt_p50_ms: float
    rtt_p99_ms: float
    server_cpu_s: float
    server_cpu_percent: float
    cpu_us_per_msg: float
    #: CPU of the client processes, and of everything else on the machine (noise).
    client_cpu_percent: float
    other_cpu_percent: float


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds of the server, the clients and the whole machine at one moment."""

    wall: float
    server: float
    clients: float
    machine: float

    @classmethod
    def take(cls, server: ServerProcess, workers: Workers) -> CpuSnapshot:
        """Read them all now."""
        return cls(
            time.monotonic(),
            server.cpu_seconds(),
            sum(process_cpu_seconds(w.pid) for w in workers.processes),
            machine_busy_seconds(),
        )


def is_tree(server_key: str) -> bool:
    """Whether ``server_key`` names one of the ``--baseline-dir`` trees (``tree0``, ...)."""
    return server_key.startswith("tree")


def server_label(server_key: str, args: argparse.Namespace) -> str:
    """How ``server_key`` appears in the tables."""
    if is_tree(server_key):
        return f"{args.baseline_dir[int(server_key[4:])].name} (uvloop)"
    return SERVER_LABELS[server_key]


def run_relay(
    server_key: str, round_: int, args: argparse.Namespace, workdir: Path, progress: Progress
) -> RelayResult:
    """One server, one round: connect the pairs, warm up, measure, stop."""
    if server_key == "peerjs":
        server = start_peerjs(args.node, ensure_peerjs(args.peerjs_dir, args.npm), workdir)
    else:
        server = start_chatsubo(
            args.python,
            workdir,
            uvloop=server_key != "chatsubo-asyncio",
            messages_per_second=args.messages_per_second,
            source=args.baseline_dir[int(server_key[4:])] if is_tree(server_key) else REPO,
            label=server_label(server_key, args),
        )
    phase = f"relay {server.label}, round {round_}:"
    with running(server):
        tag = f"r{round_}{secrets.token_hex(3)}"
        jobs = [
            RelayJob(server_key, server.port, w, n, args.signal_bytes, tag)
            for w, n in enumerate(split(args.pairs, args.client_procs))
        ]
        workers = Workers.start(relay_client_process, jobs)
        try:
            progress.show(phase, "connecting")
            workers.gather("ready", time.monotonic() + SETUP_DEADLINE, alive=server.check_alive)
            start = time.monotonic() + args.warmup
            end = start + args.measure
            workers.send(("go", start, end))
            wait_until(start, progress, f"{phase} warm-up")
            first = CpuSnapshot.take(server, workers)

            def cpu_now() -> str:
                used = server.cpu_seconds() - first.server
                return f"(server CPU {100 * used / max(time.monotonic() - first.wall, 1e-3):3.0f}%)"

            wait_until(end, progress, f"{phase} measuring", cpu_now)
            last = CpuSnapshot.take(server, workers)
            server.check_alive()
            progress.show(f"{phase} draining")
            counts: list[RelayCounts] = workers.gather(
                "done", time.monotonic() + 60, alive=server.check_alive
            )
        finally:
            workers.stop()
    errors = [e for c in counts for e in c.errors]
    if errors:
        raise RuntimeError(f"{server.label}: {len(errors)} client errors, first: {errors[0]}")
    relayed = sum(c.received for c in counts)
    if not relayed:
        raise RuntimeError(f"{server.label}: nothing was relayed in the window")
    rtts = sorted(r for c in counts for r in c.rtts)
    wall, cpu_used = last.wall - first.wall, last.server - first.server
    clients_used = last.clients - first.clients
    result = RelayResult(
        server=server_key,
        label=server.label,
        round=round_,
        pairs=args.pairs,
        window_s=wall,
        relayed=relayed,
        msgs_per_s=relayed / wall,
        rtt_p50_ms=1000 * percentile(rtts, 0.50),
        rtt_p99_ms=1000 * percentile(rtts, 0.99),
        server_cpu_s=cpu_used,
        server_cpu_percent=100 * cpu_used / wall,
        cpu_us_per_msg=1e6 * cpu_used / relayed,
        client_cpu_percent=100 * clients_used / wall,
        other_cpu_percent=100 * (last.machine - first.machine - cpu_used - clients_used) / wall,
    )
    progress.done(
        f"relay {result.label:26} round {round_}: {result.msgs_per_s:8.0f} msg/s  "
        f"RTT p50 {result.rtt_p50_ms:6.2f} ms p99 {result.rtt_p99_ms:6.2f} ms  "
        f"CPU {result.cpu_us_per_msg:5.1f} us/msg ({result.server_cpu_percent:.0f}%; "
        f"clients {result.client_cpu_percent:.0f}%, other {result.other_cpu_percent:.0f}%)"
    )
    return result


def relay_order(servers: list[str], rounds: int) -> list[tuple[str, int]]:
    """Servers one after the other, the order reversed every other round so drift shows."""
    order: list[tuple[str, int]] = []
    for r in range(1, rounds + 1):
        order += [(s, r) for s in (servers if r % 2 else list(reversed(servers)))]
    return order


def relay_summary(results: list[RelayResult]) -> dict[str, dict[str, float]]:
    """Per server: the median of each figure over its rounds (the mean of two)."""
    summary: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(r.server for r in results):
        runs = [r for r in results if r.server == key]
        summary[key] = {
            name: statistics.median(getattr(r, name) for r in runs)
            for name in ("msgs_per_s", "rtt_p50_ms", "rtt_p99_ms", "cpu_us_per_msg")
        }
    return summary


def relay_table(results: list[RelayResult]) -> str:
    """The side-by-side table: every round, then the medians and the CPU ratios."""
    summary = relay_summary(results)
    head = (
        f"{'server':27} {'round':>5} {'msgs/s':>8} {'RTT p50 ms':>10} {'RTT p99 ms':>10} "
        f"{'CPU us/msg':>10} {'server %':>8} {'clients %':>9} {'other %':>7}"
    )
    lines = [head, "-" * len(head)]
    for key in summary:
        for r in (r for r in results if r.server == key):
            lines.append(
                f"{r.label:27} {r.round:>5} {r.msgs_per_s:>8.0f} {r.rtt_p50_ms:>10.2f} "
                f"{r.rtt_p99_ms:>10.2f} {r.cpu_us_per_msg:>10.1f} {r.server_cpu_percent:>8.0f} "
                f"{r.client_cpu_percent:>9.0f} {r.other_cpu_percent:>7.0f}"
            )
    lines.append("-" * len(head))
    labels = {r.server: r.label for r in results}
    for key, s in summary.items():
        lines.append(
            f"{labels[key]:27} {'med.':>5} {s['msgs_per_s']:>8.0f} "
            f"{s['rtt_p50_ms']:>10.2f} {s['rtt_p99_ms']:>10.2f} {s['cpu_us_per_msg']:>10.1f}"
        )
    if "peerjs" in summary:
        base = summary["peerjs"]["cpu_us_per_msg"]
        for key, s in summary.items():
            if key != "peerjs":
                lines.append(
                    f"CPU per message, peerjs / {labels[key]}: {base / s['cpu_us_per_msg']:.2f}"
                )
    lines.append(
        "CPU % is of one core; 'other' is the rest of the machine in the window: "
        "high values mean a disturbed round."
    )
    return "\n".join(lines)


# --- join ----------------------------------------------------------------------------


@dataclass
class JoinResult:
    """Join-to-peer_list latency as a client sees it, plus the server's own view."""

    joins: int
    rooms: int
    room_size: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_mean_ms: float


async def _drain(ws: ClientWS) -> None:
    """Read and drop whatever arrives (peer_joined, pings) until the socket closes."""
    while (await ws.receive()).type not in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.ERROR,
    ):
        pass


def _server_join_mean_ms(port: int) -> float:
    """Mean join handling time from the server's Prometheus histogram."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("chatsubo_join_latency_seconds_"):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("chatsubo_join_latency_seconds_count", 0.0)
    return (
        1000 * values.get("chatsubo_join_latency_seconds_sum", 0.0) / count if count else math.nan
    )


async def _join_clients(port: int, rooms: int, room_size: int, progress: Progress) -> list[float]:
    wire = ChatsuboWire(0)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        progress.show("join:", "connecting")
        opened: list[tuple[ClientWS, str]] = await bounded(
            [partial(connect, session, wire, port, "") for _ in range(rooms * room_size)], 16
        )
        sockets = [ws for ws, _ in opened]
        latencies: list[float] = []
        drains: list[asyncio.Task[None]] = []

        async def one(ws: ClientWS, room: str) -> None:
            started = time.perf_counter()
            await join(ws, room, "bench")
            latencies.append(time.perf_counter() - started)
            drains.append(asyncio.create_task(_drain(ws)))

        # Wave k brings every room from k to k + 1 members, one join per room at once.
        for k in range(room_size):
            progress.show("join:", f"wave {k + 1}/{room_size}")
            await asyncio.gather(
                *(one(sockets[r * room_size + k], f"join-{r}") for r in range(rooms))
            )
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await asyncio.gather(*drains, return_exceptions=True)
    return latencies


def run_join(args: argparse.Namespace, workdir: Path, progress: Progress) -> JoinResult:
    """Fill ``args.join_rooms`` rooms to ``args.join_room_size``, timing every join."""
    server = start_chatsubo(
        args.python, workdir, uvloop=True, messages_per_second=args.messages_per_second
    )
    latencies: list[float] = []

    async def main() -> None:
        latencies.extend(
            await _join_clients(server.port, args.join_rooms, args.join_room_size, progress)
        )

    with running(server):
        run_loop(main())
        server_mean = _server_join_mean_ms(server.port)
    ordered = sorted(latencies)
    result = JoinResult(
        joins=len(ordered),
        rooms=args.join_rooms,
        room_size=args.join_room_size,
        p50_ms=1000 * percentile(ordered, 0.50),
        p99_ms=1000 * percentile(ordered, 0.99),
        max_ms=1000 * ordered[-1],
        server_mean_ms=server_mean,
    )
    progress.done(
        f"join: {result.joins} joins into {result.rooms} rooms of up to {result.room_size}: "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.2f} ms "
        f"(server-side mean {result.server_mean_ms:.3f} ms)"
    )
    return result


# --- idle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleJob:
    """What one idle client process does."""

    port: int
    worker: int
    connections: int
    room_size: int  # 0: connect and stay in the lobby


async def _idle_client(pipe: Pipe, job: IdleJob) -> None:
    wire = ChatsuboWire(0)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[ClientWS] = []
        readers: list[asyncio.Task[None]] = []

        async def open_one(i: int) -> None:
            ws, _ = await connect(session, wire, job.port, "")
            sockets.append(ws)
            if job.room_size:
                await join(ws, f"idle-{job.worker}-{i // job.room_size}", "idle")
            # Someone has to read: peer_joined arrives, and pings want pongs.
            readers.append(asyncio.create_task(_drain(ws)))
            if len(readers) % 250 == 0:
                pipe.send(("progress", len(readers)))

        # Joins within a room go one at a time so each room fills in order.
        if job.room_size:
            rooms = split(job.connections, math.ceil(job.connections / job.room_size))
            starts = [sum(rooms[:r]) for r in range(len(rooms))]

            async def fill(first: int, size: int) -> None:
                for i in range(first, first + size):
                    await open_one(i)

            await bounded([partial(fill, f, s) for f, s in zip(starts, rooms, strict=True)], 24)
        else:
            await bounded([partial(open_one, i) for i in range(job.connections)], 24)
        pipe.send(("ready", len(sockets)))
        await recv_pipe(pipe)
        for task in readers:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    pipe.send(("closed", None))


def idle_client_process(pipe: Pipe, job: IdleJob) -> None:
    """Entry point of one idle client process."""
    run_client_process(pipe, f"idle client {job.worker}", _idle_client(pipe, job))


@dataclass
class IdleResult:
    """Server memory with many idle WebSockets."""

    connections: int
    joined_rooms_of: int
    connect_s: float
    rss_baseline_mb: float
    rss_loaded_mb: float
    kib_per_connection: float
    open_after_hold: int
    hold_s: float
    hold_cpu_percent: float


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=10) as response:
        health: dict[str, Any] = json.loads(response.read())
        return health


def run_idle(args: argparse.Namespace, workdir: Path, progress: Progress) -> IdleResult:
    """Open ``args.idle_connections`` WebSockets, hold them, and read the server's RSS."""
    n = args.idle_connections
    server = start_chatsubo(
        args.python,
        workdir,
        uvloop=True,
        messages_per_second=args.messages_per_second,
        max_connections=max(20000, n + 100),
    )
    with running(server):
        # One connection first, so the baseline already holds whatever the first one loads.
        async def warm() -> None:
            async with aiohttp.ClientSession() as session:
                ws, _ = await connect(session, ChatsuboWire(0), server.port, "")
                if args.idle_room_size:
                    await join(ws, "idle-warmup", "warmup")
                await ws.close()

        run_loop(warm())
        baseline = server.rss_bytes()
        jobs = [
            IdleJob(server.port, w, count, args.idle_room_size)
            for w, count in enumerate(split(n, args.idle_procs))
        ]
        workers = Workers.start(idle_client_process, jobs)
        try:
            began = time.monotonic()

            def show(counts: list[Any]) -> None:
                opened = sum(counts)
                rate = opened / max(time.monotonic() - began, 1e-3)
                progress.show("idle: connecting", f"{opened}/{n} ({rate:.0f}/s)")

            opened = sum(
                workers.gather("ready", began + 600, on_progress=show, alive=server.check_alive)
            )
            connect_s = time.monotonic() - began
            hold_end = time.monotonic() + args.idle_hold
            cpu_start = server.cpu_seconds()
            wait_until(hold_end, progress, f"idle: holding {opened} connections")
            hold_cpu = server.cpu_seconds() - cpu_start
            loaded = server.rss_bytes()
            still_open = int(_healthz(server.port)["connections"])
            progress.show("idle: closing")
            workers.send(("stop",))
            workers.gather("closed", time.monotonic() + 60)
        finally:
            workers.stop()
    result = IdleResult(
        connections=opened,
        joined_rooms_of=args.idle_room_size,
        connect_s=connect_s,
        rss_baseline_mb=baseline / 2**20,
        rss_loaded_mb=loaded / 2**20,
        kib_per_connection=(loaded - baseline) / 1024 / opened,
        open_after_hold=still_open,
        hold_s=args.idle_hold,
        hold_cpu_percent=100 * hold_cpu / args.idle_hold,
    )
    where = f"joined to rooms of {args.idle_room_size}" if args.idle_room_size else "not joined"
    progress.done(
        f"idle: {opened} WebSockets ({where}) opened in {connect_s:.1f} s; server RSS "
        f"{result.rss_baseline_mb:.1f} MB -> {result.rss_loaded_mb:.1f} MB, "
        f"{result.kib_per_connection:.1f} KiB per connection; {still_open} still open after "
        f"{args.idle_hold:g} s; server CPU {result.hold_cpu_percent:.1f}% while idle"
    )
    if still_open != opened:
        print(f"WARNING: {opened - still_open} connections dropped while idle", file=sys.stderr)
    return result


# --- machine and command line ------------------------------------------------------


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _package_version("aiohttp"),
        "msgspec": _package_version("msgspec"),
        "uvloop": _package_version("uvloop"),
        "node": _version([args.node, "--version"]),
        "peer": PEERJS_VERSION,
    }


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(allowed)}, comma-separated (got {text!r})"
            )
        return items

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option; the description laid out as written."""


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="Everything runs on 127.0.0.1 and stops by itself; the defaults take about two "
        "minutes on two cores. Chatsubo runs with --messages-per-second high enough that its "
        "per-connection rate limiter is not what is measured. Progress goes to stderr, "
        "the tables to stdout.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--only",
        type=_csv(BENCHMARKS),
        default=",".join(BENCHMARKS),
        metavar="LIST",
        help="benchmarks to run, comma-separated",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    relay = parser.add_argument_group("relay")
    relay.add_argument(
        "--servers",
        type=_csv(RELAY_SERVERS),
        default=",".join(RELAY_SERVERS),
        metavar="LIST",
        help="servers to compare, comma-separated: chatsubo (on uvloop, its default), "
        "chatsubo-asyncio (--no-uvloop), peerjs",
    )
    relay.add_argument(
        "--baseline-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another source tree of chatsubo (e.g. `git archive` of an older commit, with "
        "its web/ folder) to run as one more server, labelled with the folder's name: "
        "before/after numbers from one run (repeatable)",
    )
    relay.add_argument("--pairs", type=positive_int, default=200, metavar="N", help="client pairs")
    relay.add_argument(
        "--rounds", type=positive_int, default=2, metavar="N", help="rounds over all servers"
    )
    relay.add_argument(
        "--warmup", type=positive_float, default=3.0, metavar="S", help="seconds before measuring"
    )
    relay.add_argument(
        "--measure", type=positive_float, default=10.0, metavar="S", help="seconds measured"
    )
    relay.add_argument(
        "--client-procs",
        type=positive_int,
        default=3,
        metavar="N",
        help="client processes the pairs are spread over",
    )
    relay.add_argument(
        "--signal-bytes",
        type=positive_int,
        default=1500,
        metavar="B",
        help="approximate size of one signal frame",
    )
    join_group = parser.add_argument_group("join")
    join_group.add_argument(
        "--join-rooms",
        type=positive_int,
        default=20,
        metavar="N",
        help="rooms filled side by side, one join per room at a time",
    )
    join_group.add_argument(
        "--join-room-size", type=positive_int, default=10, metavar="N", help="joins per room"
    )
    idle = parser.add_argument_group("idle")
    idle.add_argument(
        "--idle-connections",
        type=positive_int,
        default=10000,
        metavar="N",
        help="idle WebSockets to open",
    )
    idle.add_argument(
        "--idle-procs",
        type=positive_int,
        default=4,
        metavar="N",
        help="client processes opening them",
    )
    idle.add_argument(
        "--idle-room-size",
        type=int,
        default=10,
        metavar="N",
        help="join the idle clients to rooms of N; 0 leaves them welcomed but in no room",
    )
    idle.add_argument(
        "--idle-hold",
        type=positive_float,
        default=8.0,
        metavar="S",
        help="seconds to hold them open before reading RSS; longer than a heartbeat period, "
        "so the pings are part of it",
    )
    servers = parser.add_argument_group("servers")
    servers.add_argument(
        "--python", default=sys.executable, help="the Python that runs `-m chatsubo serve`"
    )
    servers.add_argument(
        "--messages-per-second",
        type=positive_float,
        default=100000,
        metavar="N",
        help="Chatsubo's per-connection rate limit during the benchmark",
    )
    servers.add_argument("--node", default="node", help="node binary that runs peerjs-server")
    servers.add_argument("--npm", default="npm", help="npm binary that installs peerjs-server")
    servers.add_argument(
        "--peerjs-dir",
        type=Path,
        default=DEFAULT_PEERJS_DIR,
        metavar="DIR",
        help=f"where peer@{PEERJS_VERSION} is installed with npm on first use",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print their tables."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for i, tree in enumerate(args.baseline_dir):
        if not (tree / "chatsubo" / "__main__.py").is_file():
            parser.error(f"--baseline-dir {tree} holds no chatsubo package")
        args.servers.insert(1 + i, f"tree{i}")
    raise_file_limit()
    progress = Progress()
    results: dict[str, Any] = {"machine": machine_info(args), "settings": vars(args).copy()}
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="chatsubo-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if "relay" in args.only:
                if "peerjs" in args.servers:
                    ensure_peerjs(args.peerjs_dir, args.npm)
                relay = [
                    run_relay(key, r, args, workdir, progress)
                    for key, r in relay_order(args.servers, args.rounds)
                ]
                results["relay"] = {
                    "runs": [asdict(r) for r in relay],
                    "median": relay_summary(relay),
                }
                tables.append(
                    f"Relay: {args.pairs} pairs, signals of {signal_size(args)} bytes, "
                    f"{args.warmup:g} s warm-up, {args.measure:g} s measured\n" + relay_table(relay)
                )
            if "join" in args.only:
                joined = run_join(args, workdir, progress)
                results["join"] = asdict(joined)
                tables.append(
                    f"Join: {joined.joins} joins, {joined.rooms} rooms filled to {joined.room_size}"
                    f"\n  p50 {joined.p50_ms:.2f} ms  p99 {joined.p99_ms:.2f} ms  "
                    f"max {joined.max_ms:.2f} ms  (server-side mean {joined.server_mean_ms:.3f} ms)"
                )
            if "idle" in args.only:
                idle = run_idle(args, workdir, progress)
                results["idle"] = asdict(idle)
                where = (
                    f"joined to rooms of {idle.joined_rooms_of}"
                    if idle.joined_rooms_of
                    else "not joined"
                )
                tables.append(
                    f"Idle: {idle.connections} WebSockets ({where}), opened in "
                    f"{idle.connect_s:.1f} s\n"
                    f"  server RSS {idle.rss_baseline_mb:.1f} MB -> {idle.rss_loaded_mb:.1f} MB, "
                    f"{idle.kib_per_connection:.1f} KiB per connection; "
                    f"{idle.open_after_hold} still open after {idle.hold_s:g} s, "
                    f"server CPU {idle.hold_cpu_percent:.1f}% of a core meanwhile"
                )
        except KeyboardInterrupt:
            progress.done("interrupted")
            return 130
        except RuntimeError as exc:
            progress.done(f"benchmark failed: {exc}")
            return 1
    m = results["machine"]
    print(
        f"\n{m['date']}  {m['nproc']} x {m['cpu']}  Python {m['python']}  "
        f"aiohttp {m['aiohttp']}  uvloop {m['uvloop']}  node {m['node']}"
    )
    for table in tables:
        print(f"\n{table}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
