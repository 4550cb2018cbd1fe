"""Fixtures: a real server on a loopback port and real WebSocket clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, async_playwright

from chatsubo.server.app import HUB, create_app
from chatsubo.server.config import ServerConfig
from chatsubo.server.hub import Hub

if TYPE_CHECKING:
    from tests.browser import Bots, Crowd

#: Generous: this machine has two shared cores.
DEADLINE = 10.0

TEST_SECRET = b"test-secret-not-for-production"


@dataclass
class Loopback:
    """Something that serves Chatsubo on a port of 127.0.0.1."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class RunningServer(Loopback):
    """A server started in this process on 127.0.0.1 and an ephemeral port."""

    runner: web.AppRunner
    config: ServerConfig

    @property
    def hub(self) -> Hub:
        return self.runner.app[HUB]

    def peer_ids(self) -> set[str]:
        """Everyone in a room on this server, those away included."""
        return {m.peer_id for m in self.hub.members()}

    def zone_of(self, peer_id: str | None) -> str | None:
        """The zone the server has for ``peer_id``; None for none, or for no such member."""
        member = self.hub.member(peer_id or "")
        return None if member is None else member.zone

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(config: ServerConfig, port: int = 0) -> RunningServer:
    """Start a server with ``config``; ``port=0`` picks a free port."""
    runner = web.AppRunner(create_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    return RunningServer(port=sockets[0].getsockname()[1], runner=runner, config=config)


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, driven by Playwright; the test is skipped where it is missing."""
    # Here, not at the top: tests.browser imports this module.
    from tests.browser import CHROMIUM, launch

    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM}: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def crowd(make_server: ServerFactory, browser: Browser) -> AsyncIterator[Crowd]:
    """Visitors in Chromium; closed before the servers stop (``make_server`` is set up first)."""
    from tests.browser import Crowd

    visitors = Crowd(browser)
    try:
        yield visitors
    finally:
        await visitors.close()


@pytest.fixture
async def bots(make_server: ServerFactory) -> AsyncIterator[Bots]:
    """Bot processes; stopped (SIGTERM, then SIGKILL) before the servers stop."""
    from tests.browser import Bots

    running = Bots()
    try:
        yield running
    finally:
        await running.close()


def free_port() -> int:
    """A TCP port nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """Debian's redis-server on a loopback port, keeping nothing on disk."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port); returns once it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + DEADLINE
        while not self.answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> str:
        """Run one command with redis-cli; its output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, check=True, text=True
        )
        return done.stdout.strip()

    def stop(self) -> None:
        """Kill it at once: whatever it held is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _start_redis() -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip("needs Debian's redis-server: apt-get install redis-server")
    redis = RedisServer(free_port())
    redis.start()
    return redis


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the whole run; ``redis`` empties it for each test."""
    redis = _start_redis()
    yield redis
    redis.stop()


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    """The shared redis-server, emptied."""
    shared_redis.command("FLUSHALL")
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start."""
    redis = _start_redis()
    yield redis
    redis.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Where ``make_server`` keeps rooms; modules with ``BOTH_BACKENDS`` run with each."""
    kind: str = getattr(request, "param", "memory")
    return kind


#: ``pytestmark`` for a module whose server tests run against both room backends.
BOTH_BACKENDS = pytest.mark.both_backends


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests marked ``both_backends`` that start servers once per backend.

    A test that names its own ``backend`` (one that only Redis has) keeps it.
    """
    marked = metafunc.definition.get_closest_marker("both_backends") is not None
    chosen = any(
        "backend" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize")
    )
    if marked and "backend" in metafunc.fixturenames and not chosen:
        metafunc.parametrize("backend", ["memory", "redis"], indirect=True)


@pytest.fixture
async def make_server(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    """Start servers with config overrides; all are stopped after the test.

    With the Redis backend, every server of the test shares one Redis, as
    several instances of one bar do.
    """
    started: list[RunningServer] = []
    shared: dict[str, Any] = {}
    if backend == "redis":
        shared["redis_url"] = request.getfixturevalue("redis").url

    async def factory(**overrides: Any) -> RunningServer:
        config = replace(ServerConfig(secret=TEST_SECRET), **{**shared, **overrides})
        server = await start_server(config)
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> RunningServer:
    """A server with the default configuration."""
    return await make_server()


_ping_ids = itertools.count(1)

#: What the server says about links and positions: kept apart (``Client.directives``),
#: so that tests of everything else read the messages they are about.
DIRECTIVES = frozenset({"link", "unlink", "positions"})


@dataclass
class Client:
    """A signaling client speaking raw JSON, for tests that check the wire."""

    ws: aiohttp.ClientWebSocketResponse
    session: aiohttp.ClientSession
    welcome: dict[str, Any]
    backlog: list[dict[str, Any]] = field(default_factory=list)
    #: The ``link``, ``unlink`` and ``positions`` messages received, in order.
    directives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return str(self.welcome["peerId"])

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def next_message(self, timeout: float, keep: str | None = None) -> dict[str, Any]:
        """The next message, directives set aside unless of type ``keep``."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket ended: {msg.type.name} {msg.data!r} {msg.extra!r}")
            data: dict[str, Any] = json.loads(msg.data)
            if data.get("type") not in DIRECTIVES or data["type"] == keep:
                return data
            self.directives.append(data)

    async def expect(self, type_: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The next message of ``type_``; others received meanwhile stay in the backlog."""
        queue = self.directives if type_ in DIRECTIVES else self.backlog
        for i, queued in enumerate(queue):
            if queued["type"] == type_:
                return queue.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message(timeout, keep=type_)
                if message["type"] == type_:
                    return message
                (self.directives if message["type"] in DIRECTIVES else self.backlog).append(message)

    async def sync(self, timeout: float = DEADLINE) -> list[dict[str, Any]]:
        """Everything the server sent before answering a fresh ping, backlog included.

        The server handles one connection's frames in order and writes
        immediately, so whatever was meant for us before the pong is here now.
        """
        token = next(_ping_ids)
        await self.send({"type": "ping", "t": token})
        received, self.backlog = self.backlog, []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message(timeout)
                if message["type"] == "pong" and message["t"] == token:
                    return received
                received.append(message)

    async def join(self, room: str, name: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "join", "roomId": room, "name": name, **extra})
        return await self.expect("peer_list")

    async def error(self, timeout: float = DEADLINE) -> dict[str, Any]:
        return await self.expect("error", timeout)

    async def closed(self, timeout: float = DEADLINE) -> int | None:
        """Wait for the server to close the socket; its close code."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    # The code the server sent, even if our answer then finds
                    # the socket gone (aiohttp would then report 1006).
                    code: int = msg.data
                    return code
                if msg.type in (
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return self.ws.close_code
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    (self.directives if data.get("type") in DIRECTIVES else self.backlog).append(
                        data
                    )

    def drop(self) -> None:
        """Cut the connection with no close frame, as a lost network would."""
        connection = self.ws._conn
        transport = connection.transport if connection is not None else None
        assert transport is not None
        transport.abort()

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[ClientFactory]:
    """Open clients to a server; all are closed after the test."""
    clients: list[Client] = []

    async def factory(
        target: RunningServer | str, origin: str | None = None, **ws_options: Any
    ) -> Client:
        url = target if isinstance(target, str) else target.ws_url
        session = aiohttp.ClientSession()
        headers = {"Origin": origin} if origin else {}
        ws = await session.ws_connect(url, headers=headers, **ws_options)
        msg = await ws.receive(timeout=DEADLINE)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        welcome = json.loads(msg.data)
        client = Client(ws, session, welcome)
        clients.append(client)
        if welcome["type"] != "welcome":
            client.backlog.append(welcome)
        return client

    yield factory
    for client in clients:
        await client.close()


SlowReaderFactory = Callable[[RunningServer], Awaitable[Client]]


def small_receive_window(addr_info: tuple[Any, ...]) -> socket.socket:
    """A client socket whose kernel receive buffer is tiny, set before connecting."""
    family, type_, proto = addr_info[:3]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


@pytest.fixture
async def connect_slow_reader() -> AsyncIterator[SlowReaderFactory]:
    """Clients that will stop reading: as little as possible buffers on their side.

    A stalled reader's bytes pile up in, in turn, its aiohttp queue (which stops
    reading from the socket past 512 KiB), its kernel receive buffer (pinned
    small here, so not autotuned to 32 MiB on loopback), the server's kernel send
    buffer (autotuned up to 4 MiB) and then the server's own transport buffer,
    where ``max_send_buffer`` is enforced. So a few MiB of signals reach it
    within a fraction of a second.
    """
    sessions: list[aiohttp.ClientSession] = []

    async def factory(server: RunningServer) -> Client:
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=small_receive_window)
        )
        sessions.append(http)
        ws = await http.ws_connect(server.ws_url)
        msg = await ws.receive(timeout=DEADLINE)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return Client(ws, http, json.loads(msg.data))

    yield factory
    for http in sessions:
        await http.close()


async def poll(
    predicate: Callable[[], bool], timeout: float = DEADLINE, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def pair(
    connect: ClientFactory, server: RunningServer, room: str = "r"
) -> tuple[Client, Client]:
    """Alice and Bob in ``room``, Alice having seen Bob arrive."""
    a = await connect(server)
    await a.join(room, "Alice")
    b = await connect(server)
    await b.join(room, "Bob")
    await a.expect("peer_joined")
    return a, b


async def expect_signal(receiver: Client, sender: Client) -> dict[str, Any]:
    """The next signal from ``sender``; anything else received meanwhile stays in the backlog."""
    others: list[dict[str, Any]] = []
    try:
        while True:
            msg = await receiver.expect("signal")
            if msg["from"] == sender.peer_id:
                return msg
            others.append(msg)
    finally:
        receiver.backlog[:0] = others


async def relays(sender: Client, receiver: Client, data: Any) -> None:
    """``sender`` can signal ``receiver``: it gets exactly that, and the sender no error."""
    await sender.send({"type": "signal", "to": receiver.peer_id, "data": data})
    got = await expect_signal(receiver, sender)
    assert got == {"type": "signal", "from": sender.peer_id, "data": data}
    received = await sender.sync()
    assert [m for m in received if m["type"] == "error"] == []
    sender.backlog.extend(received)
