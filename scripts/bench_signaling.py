"""Benchmarks for the Chatsubo signaling server, with peerjs-server as the yardstick.

relay   P pairs of clients ping-pong SDP-sized signals: A sends to B, B answers A
        on receipt, again and again. The servers of --servers take the same
        workload one after the other, alternating over rounds. Reported:
        relayed messages a second, round-trip p50/p99, and the CPU time per
        relayed message of every server-side process over the measurement window.
rate    the same pairs at a fixed offered rate (--rate relayed messages a second,
        offers and answers counted alike) instead of as fast as the answers come
        back: round-trip p50/p99/max at a load every server carries, CPU per
        message of every server-side process, and how late the clients sent.
join    join-to-``peer_list`` latency while rooms fill up (Chatsubo only:
        peerjs-server has no rooms).
rejoin  one client joins a room whose members are all connected elsewhere
        (instance A; the joiner is on instance B), reads its ``peer_list``, leaves,
        and joins the next room: join-to-``peer_list`` latency over a few hundred
        joins, for every Chatsubo server of --servers.
idle    resident memory with N idle WebSockets joined to rooms, for every setup of
        --idle-servers: one process, or two instances sharing rooms through
        Redis (and redis-server's own memory).

Setups (--servers, --idle-servers): ``chatsubo`` is one server with rooms in its
memory; ``chatsubo-redis`` is a redis-server and two ``chatsubo serve
--redis-url`` instances with one secret, each pair's A on instance A and its B on
instance B, so every signal crosses Redis pub/sub; ``chatsubo-redis-local`` is
a redis-server and one instance holding both ends (the Redis backend without the
hop); --baseline-dir adds older source trees, run in memory.

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
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
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
    source_env,
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
BENCHMARKS = ("relay", "rate", "join", "rejoin", "idle")
DEFAULT_BENCHMARKS = ("relay", "join", "idle")
RELAY_SERVERS = (
    "chatsubo",
    "chatsubo-asyncio",
    "chatsubo-redis",
    "chatsubo-redis-local",
    "peerjs",
)
DEFAULT_SERVERS = ("chatsubo", "chatsubo-asyncio", "peerjs")
IDLE_SERVERS = ("chatsubo", "chatsubo-asyncio", "chatsubo-redis", "chatsubo-redis-local")
SERVER_LABELS = {
    "chatsubo": "chatsubo (uvloop)",
    "chatsubo-asyncio": "chatsubo (asyncio loop)",
    "chatsubo-redis": "2 instances + Redis, A->B",
    "chatsubo-redis-local": "Redis backend, 1 instance",
    "peerjs": f"peerjs-server {PEERJS_VERSION}",
}
#: Setups with rooms in Redis, and how many Chatsubo instances each runs.
REDIS_INSTANCES = {"chatsubo-redis": 2, "chatsubo-redis-local": 1}
#: The issue's target: cross-instance RTT p99 at most this many times the in-process one.
CROSS_INSTANCE_P99_TARGET = 3.0


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


# --- setups: the server side of one run --------------------------------------------


def is_tree(server_key: str) -> bool:
    """Whether ``server_key`` names one of the ``--baseline-dir`` trees (``tree0``, ...)."""
    return server_key.startswith("tree")


def server_label(server_key: str, args: argparse.Namespace) -> str:
    """How ``server_key`` appears in the tables."""
    if is_tree(server_key):
        return f"{args.baseline_dir[int(server_key[4:])].name} (uvloop)"
    return SERVER_LABELS[server_key]


def start_redis(redis_server: str, workdir: Path) -> ServerProcess:
    """A redis-server on a free loopback port that keeps nothing on disk."""
    port = free_port()
    log = workdir / f"redis-{port}.log"
    cmd = [
        redis_server,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--loglevel",
        "warning",
    ]
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return ServerProcess("redis-server", popen, port, log)


def redis_info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` of the redis-server on ``port``, as a dict (plain RESP, no client)."""
    with socket.create_connection((HOST, port), timeout=10) as conn:
        conn.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise RuntimeError(f"redis-server answered INFO with {head!r}")
        size = int(head[1:])
        while len(rest) < size:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
    lines = rest[:size].decode().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


@dataclass
class Setup:
    """The server side of one run: its processes, and where each end of a pair connects."""

    key: str
    label: str
    #: Every server-side process, by role: "server"; or "instance A", "instance B", "redis-server".
    processes: dict[str, ServerProcess]
    #: Where the initiating clients (A) and the answering ones (B) connect.
    port_a: int
    port_b: int
    redis_port: int | None = None

    @property
    def instances(self) -> dict[str, ServerProcess]:
        """The signaling servers by role, instance A's first."""
        return {role: proc for role, proc in self.processes.items() if role != "redis-server"}

    def check_alive(self) -> None:
        """Fail loudly if any of the processes has exited."""
        for proc in self.processes.values():
            proc.check_alive()

    def cpu_seconds(self) -> dict[str, float]:
        """User plus system CPU time of each process so far."""
        return {role: proc.cpu_seconds() for role, proc in self.processes.items()}

    def rss_bytes(self) -> dict[str, int]:
        """Resident set size of each process now."""
        return {role: proc.rss_bytes() for role, proc in self.processes.items()}


def _secret_file(workdir: Path) -> Path:
    """One token secret for every instance of a run, so resume tokens verify anywhere."""
    path = workdir / "secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32) + "\n")
    return path


@contextlib.contextmanager
def deployment(
    key: str, args: argparse.Namespace, workdir: Path, max_connections: int = 20000
) -> Iterator[Setup]:
    """Start the processes of setup ``key``, wait until they listen, stop them all afterwards."""
    label = server_label(key, args)
    with contextlib.ExitStack() as stack:
        if key == "peerjs":
            entry = ensure_peerjs(args.peerjs_dir, args.npm)
            server = stack.enter_context(running(start_peerjs(args.node, entry, workdir)))
            yield Setup(key, label, {"server": server}, server.port, server.port)
            return
        if key in REDIS_INSTANCES:
            redis = stack.enter_context(running(start_redis(args.redis_server, workdir)))
            shared = [
                "--redis-url",
                f"redis://{HOST}:{redis.port}/0",
                "--secret-file",
                str(_secret_file(workdir)),
            ]
            instances: dict[str, ServerProcess] = {}
            for name in "AB"[: REDIS_INSTANCES[key]]:
                instances[f"instance {name}"] = stack.enter_context(
                    running(
                        start_chatsubo(
                            args.python,
                            workdir,
                            uvloop=True,
                            messages_per_second=args.messages_per_second,
                            log_level=args.server_log_level,
                            max_connections=max_connections,
                            source=args.source,
                            label=f"{label}, instance {name}",
                            extra_args=shared,
                        )
                    )
                )
            ports = [proc.port for proc in instances.values()]
            processes = {**instances, "redis-server": redis}
            yield Setup(key, label, processes, ports[0], ports[-1], redis.port)
            return
        server = stack.enter_context(
            running(
                start_chatsubo(
                    args.python,
                    workdir,
                    uvloop=key != "chatsubo-asyncio",
                    messages_per_second=args.messages_per_second,
                    log_level=args.server_log_level,
                    max_connections=max_connections,
                    source=args.baseline_dir[int(key[4:])] if is_tree(key) else args.source,
                    label=label,
                )
            )
        )
        yield Setup(key, label, {"server": server}, server.port, server.port)


def check_tree(python: str, tree: Path) -> str | None:
    """Why a server started from ``tree`` would not import its own chatsubo; None if it does."""
    probe = subprocess.run(
        [python, "-c", "import chatsubo; print(chatsubo.__file__)"],
        cwd=tree,
        env=source_env(tree),
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"it does not import: {probe.stderr.strip()[-300:]}"
    found = Path(probe.stdout.strip()).resolve()
    if not found.is_relative_to(tree.resolve()):
        return f"`import chatsubo` from it finds {found}, not its own"
    return None


# --- relay and rate --------------------------------------------------------------------


@dataclass(frozen=True)
class RelayJob:
    """What one relay client process does."""

    server: str
    port: int
    worker: int
    pairs: int
    signal_bytes: int
    tag: str
    #: Where the B end of each pair connects: another instance, or the same server.
    port_b: int = 0
    #: Round trips a second that each pair starts; 0: the next as soon as the answer is back.
    rate: float = 0.0
    #: When each pair starts its first round trip, in shares of a period (paced runs).
    phases: tuple[float, ...] = ()


@dataclass
class RelayCounts:
    """What one relay client process saw inside the measurement window."""

    received: int = 0
    rtts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Paced runs: how far behind its schedule each offer went out.
    late: list[float] = field(default_factory=list)
    #: Paced runs: offers sent whose answers never came.
    unanswered: int = 0


@dataclass
class _Pair:
    a: ClientWS
    a_id: str
    b: ClientWS
    b_id: str


async def _open_pair(session: aiohttp.ClientSession, wire: Wire, job: RelayJob, i: int) -> _Pair:
    name = f"{job.tag}-{job.worker}-{i}"
    a, a_id = await connect(session, wire, job.port, f"{name}-a")
    b, b_id = await connect(session, wire, job.port_b or job.port, f"{name}-b")
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


async def _paced_initiate(
    pair: _Pair,
    wire: Wire,
    window: tuple[float, float],
    period: float,
    first: float,
    counts: RelayCounts,
) -> None:
    """A, open loop: an offer every ``period`` from ``first`` on, answered or not.

    Each answer is matched to its offer by sequence number; the round trip runs
    from just before the offer was written to just after the answer was read.
    Offers sent in the window give the round trips; the lateness of each send
    against its schedule shows whether the client kept up.
    """
    start, end = window
    send, receive, clock, text = (
        pair.a.send_frame,
        pair.a.receive,
        time.monotonic,
        aiohttp.WSMsgType.TEXT,
    )
    outstanding: dict[int, float] = {}
    sending_done = False
    drained = asyncio.Event()

    async def read_answers() -> None:
        try:
            while not (sending_done and not outstanding):
                msg = await receive()
                now = clock()
                if msg.type is not text:
                    counts.errors.append(f"A's socket ended: {msg.type.name} {msg.data!r:.200}")
                    return
                seq = wire.seq_of(msg.data, "answer", pair.b_id)
                began = None if seq is None else outstanding.pop(seq, None)
                if began is None:
                    counts.errors.append(f"A got no answer it waited for: {msg.data!r:.200}")
                    return
                if start <= now < end:
                    counts.received += 1
                if start <= began < end:
                    counts.rtts.append(now - began)
        finally:
            drained.set()

    reader = asyncio.create_task(read_answers())
    seq = 0
    try:
        while (due := first + seq * period) < end:
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if reader.done():
                return
            now = clock()
            if start <= due:
                counts.late.append(max(0.0, now - due))
            outstanding[seq] = now
            await send(wire.frame("offer", pair.b_id, seq), text)
            seq += 1
        sending_done = True
        if not outstanding:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await drained.wait()
        counts.unanswered += sum(1 for began in outstanding.values() if start <= began < end)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


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
        if job.rate:
            period, began = 1 / job.rate, time.monotonic()
            initiators = [
                _paced_initiate(p, wire, window, period, began + phase * period, counts)
                for p, phase in zip(pairs, job.phases, strict=True)
            ]
        else:
            initiators = [_initiate(p, wire, window, counts) for p in pairs]
        try:
            async with asyncio.timeout(end - time.monotonic() + 20):
                await asyncio.gather(*initiators)
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
    """One setup's relay run, closed loop (``relay``) or at a fixed offered rate (``rate``)."""

    server: str
    label: str
    round: int
    pairs: int
    window_s: float
    relayed: int
    msgs_per_s: float
    rtt_p50_ms: float
    rtt_p99_ms: float
    #: All server-side processes together (the servers, and redis-server if any).
    server_cpu_s: float
    server_cpu_percent: float
    cpu_us_per_msg: float
    #: CPU of the client processes, and of everything else on the machine (noise).
    client_cpu_percent: float
    other_cpu_percent: float
    #: The same per server-side process, by role ("server", "instance A", "redis-server", ...).
    cpu_us_per_msg_by_process: dict[str, float] = field(default_factory=dict)
    cpu_percent_by_process: dict[str, float] = field(default_factory=dict)
    #: Paced runs only: relayed messages a second offered; 0 for a closed loop.
    offered_per_s: float = 0.0
    rtt_max_ms: float = math.nan
    #: Paced runs only: p99 of how late the clients sent against their schedule.
    late_p99_ms: float = math.nan
    unanswered: int = 0


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds of the server side, the clients and the machine at one moment."""

    wall: float
    servers: dict[str, float]
    clients: float
    machine: float

    @classmethod
    def take(cls, setup: Setup, workers: Workers) -> CpuSnapshot:
        """Read them all now."""
        return cls(
            time.monotonic(),
            setup.cpu_seconds(),
            sum(process_cpu_seconds(w.pid) for w in workers.processes),
            machine_busy_seconds(),
        )

    @property
    def server(self) -> float:
        """All server-side processes together."""
        return sum(self.servers.values())


def run_relay(
    server_key: str,
    round_: int,
    args: argparse.Namespace,
    workdir: Path,
    progress: Progress,
    paced: bool = False,
) -> RelayResult:
    """One setup, one round: connect the pairs, warm up, measure, stop.

    ``paced`` runs ``--rate-pairs`` pairs at ``--rate`` relayed messages a second
    from ``--rate-client-procs`` processes; otherwise ``--pairs`` pairs go as fast
    as the answers come back, from ``--client-procs`` processes.
    """
    pairs, procs = (
        (args.rate_pairs, args.rate_client_procs) if paced else (args.pairs, args.client_procs)
    )
    # Two relayed messages per round trip.
    per_pair = args.rate / 2 / pairs if paced else 0.0
    with deployment(server_key, args, workdir) as setup:
        phase = f"{'rate' if paced else 'relay'} {setup.label}, round {round_}:"
        tag = f"r{round_}{secrets.token_hex(3)}"
        shares = split(pairs, procs)
        jobs = [
            RelayJob(
                server_key,
                setup.port_a,
                w,
                n,
                args.signal_bytes,
                tag,
                port_b=setup.port_b,
                rate=per_pair,
                # Pairs start evenly spread over one period, across all processes.
                phases=tuple((sum(shares[:w]) + i) / pairs for i in range(n)),
            )
            for w, n in enumerate(shares)
        ]
        workers = Workers.start(relay_client_process, jobs)
        try:
            progress.show(phase, "connecting")
            workers.gather("ready", time.monotonic() + SETUP_DEADLINE, alive=setup.check_alive)
            start = time.monotonic() + args.warmup
            end = start + args.measure
            workers.send(("go", start, end))
            wait_until(start, progress, f"{phase} warm-up")
            first = CpuSnapshot.take(setup, workers)

            def cpu_now() -> str:
                used = sum(setup.cpu_seconds().values()) - first.server
                return f"(server CPU {100 * used / max(time.monotonic() - first.wall, 1e-3):3.0f}%)"

            wait_until(end, progress, f"{phase} measuring", cpu_now)
            last = CpuSnapshot.take(setup, workers)
            setup.check_alive()
            progress.show(f"{phase} draining")
            counts: list[RelayCounts] = workers.gather(
                "done", time.monotonic() + 60, alive=setup.check_alive
            )
        finally:
            workers.stop()
    errors = [e for c in counts for e in c.errors]
    if errors:
        raise RuntimeError(f"{setup.label}: {len(errors)} client errors, first: {errors[0]}")
    relayed = sum(c.received for c in counts)
    if not relayed:
        raise RuntimeError(f"{setup.label}: nothing was relayed in the window")
    rtts = sorted(r for c in counts for r in c.rtts)
    late = sorted(x for c in counts for x in c.late)
    wall, cpu_used = last.wall - first.wall, last.server - first.server
    clients_used = last.clients - first.clients
    by_process = {role: last.servers[role] - first.servers[role] for role in last.servers}
    result = RelayResult(
        server=server_key,
        label=setup.label,
        round=round_,
        pairs=pairs,
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
        cpu_us_per_msg_by_process={r: 1e6 * used / relayed for r, used in by_process.items()},
        cpu_percent_by_process={r: 100 * used / wall for r, used in by_process.items()},
        offered_per_s=args.rate if paced else 0.0,
        rtt_max_ms=1000 * rtts[-1] if rtts else math.nan,
        late_p99_ms=1000 * percentile(late, 0.99),
        unanswered=sum(c.unanswered for c in counts),
    )
    split_cpu = (
        " [" + ", ".join(f"{r} {v:.1f}" for r, v in result.cpu_us_per_msg_by_process.items()) + "]"
        if len(by_process) > 1
        else ""
    )
    extra = (
        f"  late p99 {result.late_p99_ms:.2f} ms, {result.unanswered} unanswered" if paced else ""
    )
    progress.done(
        f"{'rate' if paced else 'relay'} {result.label:26} round {round_}: "
        f"{result.msgs_per_s:8.0f} msg/s  "
        f"RTT p50 {result.rtt_p50_ms:6.2f} ms p99 {result.rtt_p99_ms:6.2f} ms  "
        f"CPU {result.cpu_us_per_msg:5.1f} us/msg{split_cpu} ({result.server_cpu_percent:.0f}%; "
        f"clients {result.client_cpu_percent:.0f}%, other {result.other_cpu_percent:.0f}%){extra}"
    )
    return result


def relay_order(servers: list[str], rounds: int) -> list[tuple[str, int]]:
    """Servers one after the other, the order reversed every other round so drift shows."""
    order: list[tuple[str, int]] = []
    for r in range(1, rounds + 1):
        order += [(s, r) for s in (servers if r % 2 else list(reversed(servers)))]
    return order


_SUMMARY_FIGURES = ("msgs_per_s", "rtt_p50_ms", "rtt_p99_ms", "rtt_max_ms", "cpu_us_per_msg")


def relay_summary(results: list[RelayResult]) -> dict[str, dict[str, float]]:
    """Per server: the median of each figure over its rounds (the mean of two)."""
    summary: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(r.server for r in results):
        runs = [r for r in results if r.server == key]
        summary[key] = {
            name: statistics.median(getattr(r, name) for r in runs) for name in _SUMMARY_FIGURES
        }
        for role in runs[0].cpu_us_per_msg_by_process:
            summary[key][f"cpu_us_per_msg[{role}]"] = statistics.median(
                r.cpu_us_per_msg_by_process[role] for r in runs
            )
            summary[key][f"cpu_percent[{role}]"] = statistics.median(
                r.cpu_percent_by_process[role] for r in runs
            )
    return summary


def _process_lines(results: list[RelayResult]) -> list[str]:
    """Medians of CPU per message for each process of the setups that have several."""
    summary = relay_summary(results)
    labels = {r.server: r.label for r in results}
    lines = []
    for key, s in summary.items():
        roles = [k[len("cpu_us_per_msg[") : -1] for k in s if k.startswith("cpu_us_per_msg[")]
        if len(roles) > 1:
            parts = ", ".join(
                f"{role} {s[f'cpu_us_per_msg[{role}]']:.1f} ({s[f'cpu_percent[{role}]']:.0f}%)"
                for role in roles
            )
            lines.append(f"  {labels[key]}: CPU us/msg (% of a core) by process: {parts}")
    return lines


def _ratio_lines(results: list[RelayResult], p99_target: float | None = None) -> list[str]:
    """Each setup against ``chatsubo`` (this tree, in memory), from the medians."""
    summary = relay_summary(results)
    labels = {r.server: r.label for r in results}
    base = summary.get("chatsubo")
    if base is None:
        return []
    lines = []
    for key, s in summary.items():
        if key == "chatsubo":
            continue
        if is_tree(key):
            lines.append(
                f"now / {labels[key]}: msgs/s {base['msgs_per_s'] / s['msgs_per_s']:.2f}, "
                f"RTT p50 {base['rtt_p50_ms'] / s['rtt_p50_ms']:.2f}, "
                f"RTT p99 {base['rtt_p99_ms'] / s['rtt_p99_ms']:.2f}, "
                f"CPU us/msg {base['cpu_us_per_msg'] / s['cpu_us_per_msg']:.2f}"
            )
            continue
        p99 = s["rtt_p99_ms"] / base["rtt_p99_ms"]
        throughput = s["msgs_per_s"] / base["msgs_per_s"]
        line = (
            f"{labels[key]} / {labels['chatsubo']}: msgs/s {throughput:.2f}, "
            f"RTT p50 {s['rtt_p50_ms'] / base['rtt_p50_ms']:.2f}, RTT p99 {p99:.2f}, "
            f"CPU us/msg (all its processes) {s['cpu_us_per_msg'] / base['cpu_us_per_msg']:.2f}"
        )
        if p99_target is not None and key == "chatsubo-redis":
            verdict = "met" if p99 <= p99_target else "MISSED"
            line += f"  [target: RTT p99 at most {p99_target:g}x: {verdict}]"
        lines.append(line)
    return lines


#: A table column: header, width, decimals, and the RelayResult field it shows;
#: the medians row shows only columns whose field is summarised.
_Column = tuple[str, int, int, str]

_RELAY_COLUMNS: list[_Column] = [
    ("msgs/s", 8, 0, "msgs_per_s"),
    ("RTT p50 ms", 10, 2, "rtt_p50_ms"),
    ("RTT p99 ms", 10, 2, "rtt_p99_ms"),
    ("CPU us/msg", 10, 1, "cpu_us_per_msg"),
    ("server %", 8, 0, "server_cpu_percent"),
    ("clients %", 9, 0, "client_cpu_percent"),
    ("other %", 7, 0, "other_cpu_percent"),
]

_RATE_COLUMNS: list[_Column] = [
    ("msgs/s", 8, 0, "msgs_per_s"),
    ("RTT p50 ms", 10, 2, "rtt_p50_ms"),
    ("RTT p99 ms", 10, 2, "rtt_p99_ms"),
    ("RTT max ms", 10, 2, "rtt_max_ms"),
    ("CPU us/msg", 10, 1, "cpu_us_per_msg"),
    ("server %", 8, 1, "server_cpu_percent"),
    ("late p99", 8, 2, "late_p99_ms"),
    ("other %", 7, 0, "other_cpu_percent"),
]


def _rounds_and_medians(results: list[RelayResult], columns: list[_Column]) -> list[str]:
    """Every round of every setup, then each setup's medians, then its processes' CPU."""
    summary = relay_summary(results)
    head = f"{'server':27} {'round':>5} " + " ".join(f"{h:>{w}}" for h, w, _, _ in columns)
    lines = [head, "-" * len(head)]
    for key in summary:
        for r in (r for r in results if r.server == key):
            cells = " ".join(f"{getattr(r, f):>{w}.{d}f}" for _, w, d, f in columns)
            lines.append(f"{r.label:27} {r.round:>5} {cells}")
    lines.append("-" * len(head))
    labels = {r.server: r.label for r in results}
    for key, s in summary.items():
        cells = " ".join(f"{s[f]:>{w}.{d}f}" for _, w, d, f in columns if f in s)
        lines.append(f"{labels[key]:27} {'med.':>5} {cells}")
    return lines + _process_lines(results)


def relay_table(results: list[RelayResult]) -> str:
    """The side-by-side table: every round, then the medians and the CPU ratios."""
    lines = _rounds_and_medians(results, _RELAY_COLUMNS)
    summary = relay_summary(results)
    labels = {r.server: r.label for r in results}
    if "peerjs" in summary:
        base = summary["peerjs"]["cpu_us_per_msg"]
        for key, s in summary.items():
            if key != "peerjs":
                lines.append(
                    f"CPU per message, peerjs / {labels[key]}: {base / s['cpu_us_per_msg']:.2f}"
                )
    lines += _ratio_lines(results)
    lines.append(
        "CPU % is of one core, summed over a setup's processes; 'other' is the rest of the "
        "machine in the window: high values mean a disturbed round."
    )
    return "\n".join(lines)


def rate_table(results: list[RelayResult]) -> str:
    """The paced runs side by side: round trips at one offered load, and what they cost."""
    lines = _rounds_and_medians(results, _RATE_COLUMNS)
    lines += _ratio_lines(results, CROSS_INSTANCE_P99_TARGET)
    unanswered = sum(r.unanswered for r in results)
    if unanswered:
        lines.append(f"WARNING: {unanswered} offers in the windows were never answered")
    lines.append(
        "'late p99' is how far behind schedule the clients sent (ms): if it is large, the "
        "clients, not the servers, set the pace."
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
        args.python,
        workdir,
        uvloop=True,
        messages_per_second=args.messages_per_second,
        source=args.source,
        log_level=args.server_log_level,
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


# --- rejoin --------------------------------------------------------------------------


@dataclass
class RejoinResult:
    """Join-to-peer_list latency of one client joining rooms whose members are elsewhere."""

    server: str
    label: str
    round: int
    joins: int
    rooms: int
    members: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: The joiner's server's own mean handling time of these joins (its histogram).
    server_mean_ms: float


def _server_join_stats(port: int) -> tuple[float, float]:
    """Sum and count of the server's ``chatsubo_join_latency_seconds`` histogram."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("chatsubo_join_latency_seconds_"):
            name, value = line.split()
            values[name] = float(value)
    return (
        values.get("chatsubo_join_latency_seconds_sum", 0.0),
        values.get("chatsubo_join_latency_seconds_count", 0.0),
    )


async def _until_pong(ws: ClientWS, t: int) -> None:
    """Send an application ping and read until its pong: the server is done with what came first."""
    await ws.send_frame(msgspec.json.encode({"type": "ping", "t": t}), aiohttp.WSMsgType.TEXT)
    while True:
        message = await next_json(ws)
        if message["type"] == "pong" and message.get("t") == t:
            return
        if message["type"] == "error":
            raise RuntimeError(f"the joiner got {message}")


async def _rejoin_clients(
    setup: Setup, args: argparse.Namespace, tag: str, progress: Progress, phase: str
) -> tuple[list[float], float]:
    """Fill the rooms on instance A, then time the joiner's joins from instance B.

    Returns the latencies of the counted joins and the joiner's server's mean
    handling time of them, in seconds.
    """
    wire = ChatsuboWire(0)
    rooms, size = args.rejoin_rooms, args.rejoin_members
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        progress.show(phase, "filling the rooms")
        opened: list[tuple[ClientWS, str]] = await bounded(
            [partial(connect, session, wire, setup.port_a, "") for _ in range(rooms * size)], 16
        )
        members = [ws for ws, _ in opened]
        drains: list[asyncio.Task[None]] = []

        async def fill(r: int) -> None:
            for ws in members[r * size : (r + 1) * size]:
                await join(ws, f"{tag}-{r}", "member")
                drains.append(asyncio.create_task(_drain(ws)))

        await bounded([partial(fill, r) for r in range(rooms)], 8)
        joiner, _ = await connect(session, wire, setup.port_b, "")
        latencies: list[float] = []
        leave = msgspec.json.encode({"type": "leave"})
        # The first pass over the rooms warms up connections and caches; not counted.
        warmup = rooms
        stats_before = (0.0, 0.0)
        for i in range(warmup + args.rejoin_joins):
            if i == warmup:
                stats_before = _server_join_stats(setup.port_b)
            if i % 25 == 0:
                progress.show(phase, f"join {i + 1}/{warmup + args.rejoin_joins}")
            started = time.perf_counter()
            await join(joiner, f"{tag}-{i % rooms}", "joiner")
            took = time.perf_counter() - started
            if i >= warmup:
                latencies.append(took)
            await joiner.send_frame(leave, aiohttp.WSMsgType.TEXT)
            # The pong comes once the leave is done: the next join waits for nothing.
            await _until_pong(joiner, i)
            await asyncio.sleep(args.rejoin_gap)
        total, count = _server_join_stats(setup.port_b)
        joins = count - stats_before[1]
        server_mean = (total - stats_before[0]) / joins if joins else math.nan
        await joiner.close()
        await asyncio.gather(*(ws.close() for ws in members), return_exceptions=True)
        await asyncio.gather(*drains, return_exceptions=True)
    return latencies, server_mean


def run_rejoin(
    server_key: str, round_: int, args: argparse.Namespace, workdir: Path, progress: Progress
) -> RejoinResult:
    """One setup, one round of ``--rejoin-joins`` timed joins."""
    latencies: list[float] = []
    server_mean = math.nan
    with deployment(server_key, args, workdir) as setup:
        phase = f"rejoin {setup.label}, round {round_}:"

        async def main() -> None:
            nonlocal server_mean
            found, server_mean = await _rejoin_clients(
                setup, args, f"j{round_}{secrets.token_hex(3)}", progress, phase
            )
            latencies.extend(found)

        run_loop(main())
        setup.check_alive()
    ordered = sorted(latencies)
    result = RejoinResult(
        server=server_key,
        label=setup.label,
        round=round_,
        joins=len(ordered),
        rooms=args.rejoin_rooms,
        members=args.rejoin_members,
        p50_ms=1000 * percentile(ordered, 0.50),
        p90_ms=1000 * percentile(ordered, 0.90),
        p99_ms=1000 * percentile(ordered, 0.99),
        max_ms=1000 * ordered[-1],
        server_mean_ms=1000 * server_mean,
    )
    progress.done(
        f"rejoin {result.label:26} round {round_}: {result.joins} joins: "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.2f} ms "
        f"(server-side mean {result.server_mean_ms:.3f} ms)"
    )
    return result


def rejoin_table(results: list[RejoinResult]) -> str:
    """Every round, the medians, and each setup against ``chatsubo``."""
    head = (
        f"{'server':27} {'round':>5} {'joins':>5} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'server ms':>9}"
    )
    lines = [head, "-" * len(head)]
    keys = list(dict.fromkeys(r.server for r in results))
    for key in keys:
        for r in (r for r in results if r.server == key):
            lines.append(
                f"{r.label:27} {r.round:>5} {r.joins:>5} {r.p50_ms:>7.2f} {r.p90_ms:>7.2f} "
                f"{r.p99_ms:>7.2f} {r.max_ms:>7.2f} {r.server_mean_ms:>9.3f}"
            )
    lines.append("-" * len(head))
    medians: dict[str, dict[str, float]] = {}
    labels = {r.server: r.label for r in results}
    for key in keys:
        runs = [r for r in results if r.server == key]
        m = medians[key] = {
            name: statistics.median(getattr(r, name) for r in runs)
            for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "server_mean_ms")
        }
        lines.append(
            f"{labels[key]:27} {'med.':>5} {'':>5} {m['p50_ms']:>7.2f} {m['p90_ms']:>7.2f} "
            f"{m['p99_ms']:>7.2f} {m['max_ms']:>7.2f} {m['server_mean_ms']:>9.3f}"
        )
    base = medians.get("chatsubo")
    if base is not None:
        for key, m in medians.items():
            if is_tree(key):
                p50, p99 = base["p50_ms"] / m["p50_ms"], base["p99_ms"] / m["p99_ms"]
                lines.append(f"now / {labels[key]}: p50 {p50:.2f}, p99 {p99:.2f}")
            elif key != "chatsubo":
                p50, p99 = m["p50_ms"] / base["p50_ms"], m["p99_ms"] / base["p99_ms"]
                lines.append(f"{labels[key]} / {labels['chatsubo']}: p50 {p50:.2f}, p99 {p99:.2f}")
    lines.append(
        "'server ms' is the joiner's server's own mean handling time (its join histogram)."
    )
    return "\n".join(lines)


# --- idle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleJob:
    """What one idle client process does."""

    #: The servers to spread the connections over.
    ports: tuple[int, ...]
    worker: int
    connections: int
    room_size: int  # 0: connect and stay in the lobby
    #: "span": the members of each room alternate between the servers; "apart":
    #: each room lives on one server.
    mix: str = "span"


async def _idle_client(pipe: Pipe, job: IdleJob) -> None:
    wire = ChatsuboWire(0)
    connector = aiohttp.TCPConnector(limit=0)
    ports = job.ports
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[ClientWS] = []
        readers: list[asyncio.Task[None]] = []

        async def open_one(room: int | None, seat: int) -> None:
            if room is None:
                port = ports[seat % len(ports)]
            else:
                port = ports[(seat if job.mix == "span" else room) % len(ports)]
            ws, _ = await connect(session, wire, port, "")
            sockets.append(ws)
            if room is not None:
                await join(ws, f"idle-{job.worker}-{room}", "idle")
            # Someone has to read: peer_joined arrives, and pings want pongs.
            readers.append(asyncio.create_task(_drain(ws)))
            if len(readers) % 250 == 0:
                pipe.send(("progress", len(readers)))

        # Joins within a room go one at a time so each room fills in order.
        if job.room_size:
            rooms = split(job.connections, math.ceil(job.connections / job.room_size))

            async def fill(room: int, size: int) -> None:
                for seat in range(size):
                    await open_one(room, seat)

            await bounded([partial(fill, r, size) for r, size in enumerate(rooms)], 24)
        else:
            await bounded([partial(open_one, None, i) for i in range(job.connections)], 24)
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
    """Server-side memory with many idle WebSockets, per process."""

    server: str
    label: str
    connections: int
    joined_rooms_of: int
    rooms: int
    mix: str
    connect_s: float
    #: Per process, by role: resident memory before and with the connections open.
    rss_baseline_mb: dict[str, float]
    rss_loaded_mb: dict[str, float]
    #: Per signaling server: connections open after the hold (its /healthz).
    open_by_instance: dict[str, int]
    #: Per process: its growth over the connections it holds (redis-server: over all of them).
    kib_per_connection_by_process: dict[str, float]
    #: All server-side processes together, over all the connections.
    kib_per_connection: float
    open_after_hold: int
    hold_s: float
    hold_cpu_percent: dict[str, float]
    #: redis-server's own count of its data (INFO memory used_memory), if there is one.
    redis_used_baseline_mb: float = math.nan
    redis_used_loaded_mb: float = math.nan


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=10) as response:
        health: dict[str, Any] = json.loads(response.read())
        return health


def _redis_used_mb(setup: Setup) -> float:
    if setup.redis_port is None:
        return math.nan
    return int(redis_info(setup.redis_port, "memory")["used_memory"]) / 2**20


def run_idle(
    server_key: str, args: argparse.Namespace, workdir: Path, progress: Progress
) -> IdleResult:
    """Open ``args.idle_connections`` WebSockets, hold them, and read every process's RSS."""
    servers = REDIS_INSTANCES.get(server_key, 1)
    n = args.idle_connections * (servers if args.idle_per_instance else 1)
    per_server = math.ceil(n / servers)
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if per_server + 200 > hard_limit:
        raise RuntimeError(
            f"idle {server_label(server_key, args)}: {per_server} WebSockets in one server "
            f"process need more file descriptors than the open-file limit allows ({hard_limit}, "
            "ulimit -Hn; raising it needs CAP_SYS_RESOURCE): open fewer, or spread them over "
            "the instances of chatsubo-redis"
        )
    limit = max(20000, per_server + 100)
    with deployment(server_key, args, workdir, max_connections=limit) as setup:
        ports = tuple(proc.port for proc in setup.instances.values())

        # One connection per server first, so the baseline holds whatever the first one loads.
        async def warm() -> None:
            async with aiohttp.ClientSession() as session:
                for k, port in enumerate(ports):
                    ws, _ = await connect(session, ChatsuboWire(0), port, "")
                    if args.idle_room_size:
                        await join(ws, f"idle-warmup-{k}", "warmup")
                    await ws.close()

        run_loop(warm())
        baseline = setup.rss_bytes()
        redis_baseline = _redis_used_mb(setup)
        jobs = [
            IdleJob(ports, w, count, args.idle_room_size, args.idle_mix)
            for w, count in enumerate(split(n, args.idle_procs))
        ]
        rooms = (
            sum(math.ceil(job.connections / job.room_size) for job in jobs)
            if args.idle_room_size
            else 0
        )
        workers = Workers.start(idle_client_process, jobs)
        try:
            began = time.monotonic()

            def show(counts: list[Any]) -> None:
                opened = sum(counts)
                rate = opened / max(time.monotonic() - began, 1e-3)
                progress.show(f"idle {setup.label}: connecting", f"{opened}/{n} ({rate:.0f}/s)")

            opened = sum(
                workers.gather("ready", began + 600, on_progress=show, alive=setup.check_alive)
            )
            connect_s = time.monotonic() - began
            hold_end = time.monotonic() + args.idle_hold
            cpu_start = setup.cpu_seconds()
            wait_until(hold_end, progress, f"idle {setup.label}: holding {opened} connections")
            hold_cpu = {r: used - cpu_start[r] for r, used in setup.cpu_seconds().items()}
            loaded = setup.rss_bytes()
            redis_loaded = _redis_used_mb(setup)
            open_by_instance = {
                role: int(_healthz(proc.port)["connections"])
                for role, proc in setup.instances.items()
            }
            progress.show(f"idle {setup.label}: closing")
            workers.send(("stop",))
            workers.gather("closed", time.monotonic() + 60)
        finally:
            workers.stop()
    still_open = sum(open_by_instance.values())
    growth = {role: loaded[role] - baseline[role] for role in loaded}
    per_process = {
        role: growth[role] / 1024 / max(open_by_instance.get(role, opened), 1) for role in growth
    }
    result = IdleResult(
        server=server_key,
        label=setup.label,
        connections=opened,
        joined_rooms_of=args.idle_room_size,
        rooms=rooms,
        mix=args.idle_mix if len(ports) > 1 else "",
        connect_s=connect_s,
        rss_baseline_mb={r: v / 2**20 for r, v in baseline.items()},
        rss_loaded_mb={r: v / 2**20 for r, v in loaded.items()},
        open_by_instance=open_by_instance,
        kib_per_connection_by_process=per_process,
        kib_per_connection=sum(growth.values()) / 1024 / opened,
        open_after_hold=still_open,
        hold_s=args.idle_hold,
        hold_cpu_percent={r: 100 * used / args.idle_hold for r, used in hold_cpu.items()},
        redis_used_baseline_mb=redis_baseline,
        redis_used_loaded_mb=redis_loaded,
    )
    progress.done(
        f"idle {result.label}: {opened} WebSockets ({_idle_where(result)}) opened in "
        f"{connect_s:.1f} s; RSS "
        + ", ".join(
            f"{r} {result.rss_baseline_mb[r]:.1f} -> {result.rss_loaded_mb[r]:.1f} MB"
            for r in result.rss_loaded_mb
        )
        + f"; {result.kib_per_connection:.1f} KiB per connection in all; {still_open} still "
        f"open after {args.idle_hold:g} s"
    )
    if still_open != opened:
        print(f"WARNING: {opened - still_open} connections dropped while idle", file=sys.stderr)
    return result


def _idle_where(idle: IdleResult) -> str:
    if not idle.joined_rooms_of:
        return "not joined"
    where = f"joined to {idle.rooms} rooms of up to {idle.joined_rooms_of}"
    if idle.mix == "span":
        return where + ", each room's members alternating between the instances"
    if idle.mix == "apart":
        return where + ", each room on one instance"
    return where


def idle_table(idle: IdleResult) -> str:
    """One setup's memory, per process."""
    lines = [
        f"Idle, {idle.label}: {idle.connections} WebSockets ({_idle_where(idle)}), opened and "
        f"joined in {idle.connect_s:.1f} s ({idle.connections / idle.connect_s:.0f}/s)",
        f"  {'process':14} {'open':>6} {'RSS before MB':>13} {'RSS after MB':>12} "
        f"{'KiB/conn':>8} {'CPU % idle':>10}",
    ]
    for role, after in idle.rss_loaded_mb.items():
        held = idle.open_by_instance.get(role)
        lines.append(
            f"  {role:14} {'' if held is None else held:>6} {idle.rss_baseline_mb[role]:>13.1f} "
            f"{after:>12.1f} {idle.kib_per_connection_by_process[role]:>8.1f} "
            f"{idle.hold_cpu_percent[role]:>10.1f}"
        )
    if len(idle.rss_loaded_mb) > 1:
        total_before = sum(idle.rss_baseline_mb.values())
        total_after = sum(idle.rss_loaded_mb.values())
        lines.append(
            f"  {'all':14} {idle.open_after_hold:>6} {total_before:>13.1f} {total_after:>12.1f} "
            f"{idle.kib_per_connection:>8.1f} {sum(idle.hold_cpu_percent.values()):>10.1f}"
        )
    if not math.isnan(idle.redis_used_loaded_mb):
        lines.append(
            f"  redis-server used_memory {idle.redis_used_baseline_mb:.1f} -> "
            f"{idle.redis_used_loaded_mb:.1f} MB"
        )
    note = f"  'open' is after {idle.hold_s:g} s of holding, CPU % over that time"
    if "redis-server" in idle.rss_loaded_mb:
        note += "; redis-server's KiB/conn is over all the connections"
    lines.append(note + ".")
    return "\n".join(lines)


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
        "redis_server": _version([args.redis_server, "--version"]),
        "commit": _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        # Uncommitted changes to the package: the servers ran the working tree.
        "changed_files": _version(["git", "-C", str(REPO), "status", "--porcelain", "chatsubo"]),
        "source": str(args.source),
        "source_digest": tree_digest(args.source),
        "baselines": {str(tree): tree_digest(tree) for tree in args.baseline_dir},
    }


def tree_digest(tree: Path) -> str:
    """A short SHA-256 over the Python files of ``tree``'s chatsubo package, to name what ran."""
    digest = hashlib.sha256()
    for path in sorted((tree / "chatsubo").rglob("*.py")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


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
        "the tables to stdout. Several instances behind Redis, against one process and the "
        "tree before the backend seam (issue 11): --only relay,rate,rejoin --servers "
        "chatsubo,chatsubo-redis --baseline-dir /tmp/before --pairs 80, then --only idle "
        "--idle-servers chatsubo,chatsubo-redis --idle-connections 10000 "
        "--idle-per-instance (docs/performance.md has the exact runs).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--only",
        type=_csv(BENCHMARKS),
        default=",".join(DEFAULT_BENCHMARKS),
        metavar="LIST",
        help=f"benchmarks to run, comma-separated, from {', '.join(BENCHMARKS)} "
        "(see the description above)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the servers' logs (chatsubo-PORT.log, redis-PORT.log) and state here "
        "instead of in a temporary folder removed afterwards",
    )
    relay = parser.add_argument_group("relay, rate and rejoin")
    relay.add_argument(
        "--servers",
        type=_csv(RELAY_SERVERS),
        default=",".join(DEFAULT_SERVERS),
        metavar="LIST",
        help="setups to compare, comma-separated: chatsubo (one process, rooms in memory, "
        "on uvloop, its default), chatsubo-asyncio (the same with --no-uvloop), "
        "chatsubo-redis (a redis-server and two instances with --redis-url; A on one, B on "
        "the other), chatsubo-redis-local (a redis-server and one instance with --redis-url, "
        "holding both ends), peerjs (relay and rate only)",
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
    rate = parser.add_argument_group(
        "rate",
        "open loop: offers go out on a schedule, answered or not; --rounds, --warmup, "
        "--measure and --signal-bytes as for relay",
    )
    rate.add_argument(
        "--rate",
        type=positive_float,
        default=1000.0,
        metavar="N",
        help="relayed messages a second offered in all, offers and answers counted alike "
        "(so N/2 round trips a second)",
    )
    rate.add_argument(
        "--rate-pairs",
        type=positive_int,
        default=20,
        metavar="N",
        help="client pairs sharing that load, their schedules spread evenly over a period",
    )
    rate.add_argument(
        "--rate-client-procs",
        type=positive_int,
        default=1,
        metavar="N",
        help="client processes the pairs are spread over",
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
    rejoin = parser.add_argument_group("rejoin")
    rejoin.add_argument(
        "--rejoin-joins",
        type=positive_int,
        default=300,
        metavar="N",
        help="timed joins per round, after one untimed pass over the rooms",
    )
    rejoin.add_argument(
        "--rejoin-rooms",
        type=positive_int,
        default=10,
        metavar="N",
        help="rooms the joiner goes through in turn",
    )
    rejoin.add_argument(
        "--rejoin-members",
        type=positive_int,
        default=9,
        metavar="N",
        help="members waiting in each room (on instance A), each told of every join and leave",
    )
    rejoin.add_argument(
        "--rejoin-gap",
        type=float,
        default=0.01,
        metavar="S",
        help="seconds between a leave (confirmed by a ping's pong) and the next join",
    )
    idle = parser.add_argument_group("idle")
    idle.add_argument(
        "--idle-servers",
        type=_csv(IDLE_SERVERS),
        default="chatsubo",
        metavar="LIST",
        help="setups to fill, one after the other, comma-separated: chatsubo, "
        "chatsubo-asyncio, chatsubo-redis (the connections spread over its two instances), "
        "chatsubo-redis-local",
    )
    idle.add_argument(
        "--idle-connections",
        type=positive_int,
        default=10000,
        metavar="N",
        help="idle WebSockets to open",
    )
    idle.add_argument(
        "--idle-per-instance",
        action="store_true",
        help="--idle-connections is per signaling server: chatsubo-redis, with two instances, "
        "opens twice as many as chatsubo, so each process holds the same number",
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
        "--idle-mix",
        choices=("span", "apart"),
        default="span",
        help="with several instances: span alternates each room's members between them (every "
        "instance follows every room), apart puts each room on one instance",
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
        "--source",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="the source tree (with chatsubo/ and web/) that runs as chatsubo and the "
        "chatsubo-redis setups: a copy keeps a run steady while the checkout changes",
    )
    servers.add_argument(
        "--messages-per-second",
        type=positive_float,
        default=100000,
        metavar="N",
        help="Chatsubo's per-connection rate limit during the benchmark",
    )
    servers.add_argument(
        "--server-log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="Chatsubo's --log-level; the logs are kept with --workdir",
    )
    servers.add_argument(
        "--redis-server",
        default="redis-server",
        help="redis-server binary for the chatsubo-redis setups; each run starts its own on a "
        "free port with --save '' --appendonly no",
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
        problem = check_tree(args.python, tree)
        if problem is not None:
            parser.error(f"--baseline-dir {tree}: {problem}")
        args.servers.insert(1 + i, f"tree{i}")
    problem = check_tree(args.python, args.source)
    if problem is not None:
        parser.error(f"--source {args.source}: {problem}")
    uses_redis = any(key in REDIS_INSTANCES for key in args.servers + args.idle_servers)
    if uses_redis and shutil.which(args.redis_server) is None:
        parser.error(f"{args.redis_server} not found: the chatsubo-redis setups need it")
    raise_file_limit()
    progress = Progress()
    results: dict[str, Any] = {"machine": machine_info(args), "settings": vars(args).copy()}
    tables: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="chatsubo-bench-"))
            )
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
            if "rate" in args.only:
                if "peerjs" in args.servers:
                    ensure_peerjs(args.peerjs_dir, args.npm)
                paced = [
                    run_relay(key, r, args, workdir, progress, paced=True)
                    for key, r in relay_order(args.servers, args.rounds)
                ]
                results["rate"] = {
                    "runs": [asdict(r) for r in paced],
                    "median": relay_summary(paced),
                }
                tables.append(
                    f"Rate: {args.rate:g} relayed messages a second offered over "
                    f"{args.rate_pairs} pairs (an offer every "
                    f"{1000 * 2 * args.rate_pairs / args.rate:g} ms per pair), signals of "
                    f"{signal_size(args)} bytes, {args.warmup:g} s warm-up, {args.measure:g} s "
                    "measured\n" + rate_table(paced)
                )
            if "join" in args.only:
                joined = run_join(args, workdir, progress)
                results["join"] = asdict(joined)
                tables.append(
                    f"Join: {joined.joins} joins, {joined.rooms} rooms filled to {joined.room_size}"
                    f"\n  p50 {joined.p50_ms:.2f} ms  p99 {joined.p99_ms:.2f} ms  "
                    f"max {joined.max_ms:.2f} ms  (server-side mean {joined.server_mean_ms:.3f} ms)"
                )
            if "rejoin" in args.only:
                keys = [key for key in args.servers if key != "peerjs"]
                rejoined = [
                    run_rejoin(key, r, args, workdir, progress)
                    for key, r in relay_order(keys, args.rounds)
                ]
                results["rejoin"] = [asdict(r) for r in rejoined]
                tables.append(
                    f"Rejoin: {args.rejoin_joins} joins a round, one at a time, into "
                    f"{args.rejoin_rooms} rooms of {args.rejoin_members} members on instance A, "
                    "from one client on instance B (the same server for one-process setups), "
                    "leaving between\n" + rejoin_table(rejoined)
                )
            if "idle" in args.only:
                idles = [run_idle(key, args, workdir, progress) for key in args.idle_servers]
                results["idle"] = [asdict(idle) for idle in idles]
                tables += [idle_table(idle) for idle in idles]
        except KeyboardInterrupt:
            progress.done("interrupted")
            return 130
        except RuntimeError as exc:
            progress.done(f"benchmark failed: {exc}")
            return 1
    m = results["machine"]
    print(
        f"\n{m['date']}  {m['nproc']} x {m['cpu']}  Python {m['python']}  "
        f"aiohttp {m['aiohttp']}  uvloop {m['uvloop']}  node {m['node']}  "
        f"commit {m['commit']}{' + changes' if m['changed_files'] else ''}\n"
        f"source {m['source']} (digest {m['source_digest']})"
        + "".join(f", baseline {tree} (digest {d})" for tree, d in m["baselines"].items())
    )
    for table in tables:
        print(f"\n{table}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
