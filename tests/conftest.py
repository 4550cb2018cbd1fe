"""Fixtures: a real server on a loopback port and real WebSocket clients."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
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
class RunningServer:
    """A server started in this process on 127.0.0.1 and an ephemeral port."""

    runner: web.AppRunner
    port: int
    config: ServerConfig

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

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
    return RunningServer(runner, sockets[0].getsockname()[1], config)


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


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with config overrides; all are stopped after the test."""
    started: list[RunningServer] = []

    async def factory(**overrides: Any) -> RunningServer:
        config = replace(ServerConfig(secret=TEST_SECRET), **overrides)
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


@dataclass
class Client:
    """A signaling client speaking raw JSON, for tests that check the wire."""

    ws: aiohttp.ClientWebSocketResponse
    session: aiohttp.ClientSession
    welcome: dict[str, Any]
    backlog: list[dict[str, Any]] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return str(self.welcome["peerId"])

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def _next(self, timeout: float) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket ended: {msg.type.name} {msg.data!r} {msg.extra!r}")
        data: dict[str, Any] = json.loads(msg.data)
        return data

    async def expect(self, type_: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The next message of ``type_``; others received meanwhile stay in the backlog."""
        for i, queued in enumerate(self.backlog):
            if queued["type"] == type_:
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                message = await self._next(timeout)
                if message["type"] == type_:
                    return message
                self.backlog.append(message)

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
                message = await self._next(timeout)
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
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return self.ws.close_code
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.backlog.append(json.loads(msg.data))

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
